"""JSON through the _json C accelerator without importing `json`.

`import json` pulls in `re` and `enum` and costs about 6 ms, a third of the
whole budget of `hull-runtime run` (DESIGN.md: start is budgeted step by step).
The C scanner and encoder are the same code json uses; only the pure-Python
wrappers, which need `re` for leading whitespace, are skipped.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` costs ~6 ms with its imports; only mypy needs it here
    from typing import Any


class _ScannerContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_scan = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]  # a duck-typed context
_WS = " \t\n\r"


class JSONError(ValueError):
    """Malformed JSON, with the character offset where parsing stopped."""


def loads(text: str | bytes) -> Any:
    if isinstance(text, bytes):
        # "utf-8-sig" would import its codec module; dropping the BOM by hand does not
        text = (text[3:] if text.startswith(b"\xef\xbb\xbf") else text).decode()
    start = len(text) - len(text.lstrip(_WS))
    try:
        value, end = _scan(text, start)
    except (StopIteration, ValueError, SystemError):
        # Malformed: the C scanner builds its error from json.decoder, and when that
        # is not imported it fails with SystemError instead, so let json explain.
        _explain(text)
        raise JSONError("invalid JSON") from None
    finally:
        _ScannerContext.memo.clear()
    if text[end:].strip(_WS):
        raise JSONError(f"invalid JSON: extra data at offset {end}")
    return value


def _explain(text: str) -> None:
    """Raise JSONError with json's own message (line, column) for malformed text."""
    import json

    try:
        json.loads(text)
    except ValueError as err:
        raise JSONError(f"invalid JSON: {err}") from None


def _default(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    """Compact JSON (the C encoder has no indent support)."""
    encoder = _json.make_encoder(
        {}, _default, _json.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    return "".join(encoder(obj, 0))


def pretty(obj: Any) -> str:
    """Indented JSON for people; off the hot path, so plain json is fine."""
    import json

    return json.dumps(obj, indent=2)
