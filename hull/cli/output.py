"""Turning results into what Docker prints: padded tables, sizes, ages, --format.

`--format` takes `table`, `json` (one JSON object per line, as `docker images
--format json`), or a small subset of Go templates: `{{.Field}}`,
`{{.A.B}}`, `{{json .X}}`, optionally after `table ` for a header row.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

from hull.errors import ConfigError

_TEMPLATE_ACTION = re.compile(r"{{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*}}")
_TABLE_PADDING = 3


def print_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO | None = None
) -> None:
    """Columns padded like Docker's tabwriter (three spaces between columns)."""
    out = out or sys.stdout
    rows = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        line = (" " * _TABLE_PADDING).join([*cells, row[-1]])
        out.write(line.rstrip() + "\n")


def human_size(size: float) -> str:
    """Docker's (go-units) HumanSize: decimal units, three significant digits: 4.26MB."""
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.3g}{units[i]}"


def human_duration(seconds: float) -> str:
    """go-units HumanDuration: `2 hours`, `About a minute`, `3 weeks`."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(s / 3600 / 24 / 365)} years"


def since(timestamp: float, now: float | None = None) -> str:
    """`3 days ago`, as Docker's CREATED column."""
    return human_duration((now if now is not None else time.time()) - timestamp) + " ago"


def parse_timestamp(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (with up to nanoseconds), else None."""
    if not text:
        return None
    cleaned = re.sub(r"(\.\d{6})\d+", r"\1", text.strip().replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(cleaned).timestamp()
    except ValueError:
        return None


def go_format(value: Any) -> str:
    """How Go's text/template prints a value: [a b] for lists, map[k:v] for maps."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(go_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_format(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _lookup(doc: Any, path: str) -> Any:
    value = doc
    for key in [p for p in path.split(".") if p]:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def render_template(template: str, doc: dict[str, Any]) -> str:
    """Fill `{{.A.B}}` and `{{json .A}}` from doc; anything else is refused, not guessed."""
    stripped = _TEMPLATE_ACTION.sub("", template)
    if "{{" in stripped or "}}" in stripped:
        raise ConfigError(
            f"unsupported --format template {template!r}: hull understands {{{{.Field}}}}, "
            "{{.A.B}} and {{json .Field}}"
        )

    def fill(match: re.Match[str]) -> str:
        value = _lookup(doc, match.group(2))
        return json.dumps(value) if match.group(1) else go_format(value)

    text = _TEMPLATE_ACTION.sub(fill, template)
    return text.replace("\\t", "\t").replace("\\n", "\n")


def template_header(template: str) -> str:
    """The header row of a `table {{.A}}\\t{{.B}}` format: the field names upper-cased."""
    return render_template(_TEMPLATE_ACTION.sub(lambda m: _header_name(m.group(2)), template), {})


def _header_name(path: str) -> str:
    name = path.rsplit(".", 1)[-1]
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).upper()


def print_formatted(
    fmt: str | None,
    docs: Sequence[dict[str, Any]],
    headers: Sequence[str],
    columns: Sequence[str],
    out: TextIO | None = None,
) -> None:
    """Print docs as a table of `columns` (keys of each doc), JSON lines, or a template."""
    out = out or sys.stdout
    if fmt is None or fmt == "table":
        print_table(headers, ([str(d.get(c, "")) for c in columns] for d in docs), out)
    elif fmt == "json":
        for d in docs:
            out.write(json.dumps(d) + "\n")
    elif fmt.startswith("table "):
        template = fmt[len("table ") :]
        lines = [template_header(template)] + [render_template(template, d) for d in docs]
        rows = [line.split("\t") for line in lines]
        print_table(rows[0], rows[1:], out)
    else:
        for d in docs:
            out.write(render_template(fmt, d) + "\n")


def print_json(value: Any, out: TextIO | None = None) -> None:
    """`docker inspect` style: indented JSON."""
    out = out or sys.stdout
    out.write(json.dumps(value, indent=4) + "\n")
