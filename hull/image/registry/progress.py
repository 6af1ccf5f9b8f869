"""Pull and push progress: rich bars on a terminal, plain lines otherwise, or nothing.

Like `docker pull`, each blob has a line keyed by its short digest. On a tty rich
draws a bar per layer; in logs and pipes only the outcome of each blob is printed
(`0123456789ab: Pull complete`). rich is imported only when a bar is drawn, so a
silent or plain pull never pays for it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Literal, Protocol, TextIO

AUTO: Literal["auto"] = "auto"


def short_digest(digest: str) -> str:
    """`sha256:0123456789abcdef...` -> `0123456789ab`, Docker's short id."""
    return digest.split(":", 1)[-1][:12]


class Progress(Protocol):
    """What pull and push report; implementations must be thread-safe."""

    def start(self, key: str, status: str, total: int | None = None) -> None: ...

    def update(self, key: str, completed: int) -> None: ...

    def finish(self, key: str, status: str) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


ProgressOption = Progress | Literal["auto"] | None


class SilentProgress:
    """progress=None: report nothing."""

    def start(self, key: str, status: str, total: int | None = None) -> None:
        pass

    def update(self, key: str, completed: int) -> None:
        pass

    def finish(self, key: str, status: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """One line per finished blob, for logs and pipes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def start(self, key: str, status: str, total: int | None = None) -> None:
        pass

    def update(self, key: str, completed: int) -> None:
        pass

    def finish(self, key: str, status: str) -> None:
        self._write(f"{key}: {status}")

    def message(self, text: str) -> None:
        self._write(text)

    def close(self) -> None:
        pass


class RichProgress:
    """A bar per blob, drawn by rich on a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._bars: Any = None  # rich.progress.Progress, created on first use
        self._tasks: dict[str, Any] = {}
        self._totals: dict[str, int | None] = {}

    def _progress(self) -> Any:
        if self._bars is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TransferSpeedColumn,
            )
            from rich.progress import (
                Progress as RichBars,
            )

            console = Console(file=self._stream or sys.stderr)
            self._bars = RichBars(
                TextColumn("{task.fields[key]}: {task.description:<18}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=console,
            )
            self._bars.start()
        return self._bars

    def start(self, key: str, status: str, total: int | None = None) -> None:
        with self._lock:
            bars = self._progress()
            self._totals[key] = total
            if key in self._tasks:
                bars.update(self._tasks[key], description=status, total=total)
            else:
                self._tasks[key] = bars.add_task(status, total=total, key=key)

    def update(self, key: str, completed: int) -> None:
        with self._lock:
            task = self._tasks.get(key)
            if task is not None:
                self._progress().update(task, completed=completed)

    def finish(self, key: str, status: str) -> None:
        with self._lock:
            bars = self._progress()
            total = self._totals.get(key) or 1
            task = self._tasks.get(key)
            if task is None:
                task = self._tasks[key] = bars.add_task(status, total=total, key=key)
            bars.update(task, description=status, completed=total, total=total)

    def message(self, text: str) -> None:
        with self._lock:
            self._progress().console.print(text, highlight=False, markup=False)

    def close(self) -> None:
        with self._lock:
            if self._bars is not None:
                self._bars.stop()


def make_progress(option: ProgressOption, stream: TextIO | None = None) -> Progress:
    """Resolve progress="auto" (bars on a tty, lines otherwise), None (silence), or a sink."""
    if option is None:
        return SilentProgress()
    if option == AUTO:
        target = stream or sys.stderr
        isatty = getattr(target, "isatty", None)
        return RichProgress(target) if isatty and isatty() else PlainProgress(target)
    if isinstance(option, str):
        raise ValueError(f"unknown progress option {option!r}")
    return option
