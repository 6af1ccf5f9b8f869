"""Warnings from the runtime without importing `logging` on the start path.

`import logging` costs about 3 ms, a sizeable share of the budget of
`hull-runtime run`, and a warning is rare. So a warning is written to stderr
directly, and handed to logging as well only when something (the engine, pytest)
has already imported it and may be listening.
"""

from __future__ import annotations

import sys


def warn(msg: str, source: str = "hull.runtime") -> None:
    """Tell the user about something ignored or degraded; source names the logger."""
    try:
        sys.stderr.write(f"hull-runtime: warning: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass  # stderr closed or None (a daemonised parent): the warning is not worth dying for
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(source).warning("%s", msg)


def debug(msg: str, source: str = "hull.runtime") -> None:
    """A detail for whoever configured logging; never printed on its own."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(source).debug("%s", msg)
