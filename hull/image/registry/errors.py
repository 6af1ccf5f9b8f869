"""Registry failures as HullErrors, with messages that say which registry and what to do.

A registry explains a refusal in a JSON body ({"errors": [{"code", "message"}]});
`error_from_response` turns that into the matching class so callers can tell
"not there" (NotFoundError, Docker's exit code for a missing image) from
"not allowed" or "not reachable".
"""

from __future__ import annotations

import json

import httpx

from hull.errors import HullError, NotFoundError


class RegistryError(HullError):
    """The registry refused a request or answered something we cannot use."""


class RegistryUnreachableError(RegistryError):
    """No connection to the registry (refused, reset, timed out, TLS failure)."""


class RegistryAuthError(RegistryError):
    """Authentication is required, or the credentials were rejected."""


class RegistryDeniedError(RegistryError):
    """Authenticated, but not allowed to do this."""


class RegistryNotFoundError(RegistryError, NotFoundError):
    """The repository, manifest or blob does not exist on the registry."""


class RegistryContentError(RegistryError):
    """The registry sent content that fails our checks (digest, size, media type)."""


_NOT_FOUND_CODES = {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN", "BLOB_UPLOAD_UNKNOWN"}


def registry_errors(response: httpx.Response) -> list[tuple[str, str]]:
    """The (code, message) pairs of an error body; empty if it has none we can read."""
    try:
        body = json.loads(response.content or b"{}")
    except (ValueError, UnicodeDecodeError):
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    pairs = []
    for item in errors:
        if isinstance(item, dict):
            pairs.append((str(item.get("code", "")).upper(), str(item.get("message", ""))))
    return pairs


def error_from_response(response: httpx.Response, host: str, action: str) -> RegistryError:
    """Map a failed response to the RegistryError subclass that says what went wrong.

    `action` reads as a phrase, e.g. "pulling manifest for foo:latest".
    """
    pairs = registry_errors(response)
    codes = {code for code, _ in pairs}
    detail = "; ".join(f"{code.lower()}: {msg}" if msg else code.lower() for code, msg in pairs)
    detail = detail or f"HTTP {response.status_code} {response.reason_phrase}".strip()
    message = f"registry {host}: {action} failed: {detail}"
    status = response.status_code
    if codes & _NOT_FOUND_CODES or (status == 404 and not codes):
        return RegistryNotFoundError(message)
    if "UNAUTHORIZED" in codes or status == 401:
        return RegistryAuthError(f"{message} (to log in: `hull login {host}`)")
    if "DENIED" in codes or status == 403:
        return RegistryDeniedError(message)
    return RegistryError(message)


def unreachable(host: str, exc: Exception, action: str = "") -> RegistryUnreachableError:
    """`cannot reach registry 127.0.0.1:5000: <why> (while <action>)` for a transport failure."""
    reason = str(exc) or type(exc).__name__
    during = f" (while {action})" if action else ""
    return RegistryUnreachableError(f"cannot reach registry {host}: {reason}{during}")
