"""Registry credentials in a docker-style config.json, for `hull login` and `hull logout`.

The file is Docker's format (`{"auths": {"host": {"auth": base64("user:pass")}}}`), so a
Docker config can be copied over as is. It lives at $HULL_CONFIG/config.json, else
$XDG_CONFIG_HOME/hull/config.json, else ~/.config/hull/config.json. It holds secrets:
it is written atomically (temp file, fsync, rename) with mode 0600, and keys other
than the entry being changed are kept as they were.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hull.errors import ConfigError

# Names Docker uses for Docker Hub in config.json; all mean docker.io.
_DOCKER_HUB_ALIASES = (
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "https://index.docker.io/v1/",
)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never show the password in logs or tracebacks
        return f"Credentials(username={self.username!r}, password='***')"


def config_path() -> Path:
    """Where config.json is, honouring $HULL_CONFIG and $XDG_CONFIG_HOME."""
    if hull_config := os.environ.get("HULL_CONFIG"):
        return Path(hull_config) / "config.json"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hull" / "config.json"


def normalize_registry(registry: str) -> str:
    """`https://index.docker.io/v1/` -> `docker.io`; `http://host:5000/` -> `host:5000`."""
    value = registry.strip()
    if value in _DOCKER_HUB_ALIASES:
        return "docker.io"
    for scheme in ("https://", "http://"):
        value = value.removeprefix(scheme)
    value = value.split("/", 1)[0]
    return "docker.io" if value in _DOCKER_HUB_ALIASES else value


def load_credentials(registry: str, path: Path | None = None) -> Credentials | None:
    """The stored credentials for `registry`, or None if there are none."""
    wanted = normalize_registry(registry)
    source = path or config_path()
    auths = _read(source).get("auths") or {}
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if normalize_registry(key) == wanted and isinstance(entry, dict):
            found = _decode_entry(source, key, entry)
            if found is not None:
                return found
    return None


def store_credentials(
    registry: str, username: str, password: str, path: Path | None = None
) -> Path:
    """Save credentials for `registry` (replacing older ones); return the file written."""
    if not username or ":" in username:
        raise ConfigError("a registry username must be non-empty and must not contain ':'")
    target = path or config_path()
    config = _read(target)
    auths = _drop_registry(config.get("auths"), registry)
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    auths[normalize_registry(registry)] = {"auth": token}
    config["auths"] = auths
    _write_atomic(target, config)
    return target


def erase_credentials(registry: str, path: Path | None = None) -> bool:
    """Forget credentials for `registry`; return whether there were any."""
    target = path or config_path()
    config = _read(target)
    before = config.get("auths")
    if not isinstance(before, dict):
        return False
    auths = _drop_registry(before, registry)
    if len(auths) == len(before):
        return False
    config["auths"] = auths
    _write_atomic(target, config)
    return True


def _drop_registry(auths: Any, registry: str) -> dict[str, Any]:
    wanted = normalize_registry(registry)
    if not isinstance(auths, dict):
        return {}
    return {k: v for k, v in auths.items() if normalize_registry(k) != wanted}


def _decode_entry(source: Path, key: str, entry: dict[str, Any]) -> Credentials | None:
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: the auth entry for {key!r} is not base64") from exc
        username, sep, password = decoded.partition(":")
        if not sep:
            raise ConfigError(f"{source}: the auth entry for {key!r} lacks 'user:password'")
        return Credentials(username, password)
    if entry.get("username") and "password" in entry:
        return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc.strerror}") from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"credentials file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"credentials file {path} must hold a JSON object")
    return data


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp_name = tempfile.mkstemp(prefix=".config.json.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as tmp:
            json.dump(data, tmp, indent=2, sort_keys=True)
            tmp.write("\n")
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
