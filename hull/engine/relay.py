"""Relay a terminal to a running process: our stdin in, its output frames out.

One loop for the two kinds of connection that carry a process's stdio: a shim's
attach socket (hull.engine.shim.AttachClient) and a microVM exec
(hull.vm.control.ExecClient). Each offers fileno, read_frame (None once the
other side hung up), send_stdin and close_stdin.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, TypeVar

    T = TypeVar("T")


def relay(client: Any, stdin_fd: int, on_frame: Callable[[Any], T | None]) -> T | None:
    """Until on_frame returns something other than None (returned) or the client
    hangs up (None): stdin_fd's data goes to the client, its end as close_stdin();
    every frame goes to on_frame. stdin_fd -1: no stdin."""
    import select

    watch = [client.fileno()] + ([stdin_fd] if stdin_fd >= 0 else [])
    while True:
        try:
            readable, _, _ = select.select(watch, [], [])
        except InterruptedError:
            continue
        if stdin_fd in readable:
            data = os.read(stdin_fd, 65536)
            if data:
                client.send_stdin(data)
            else:
                client.close_stdin()
                watch.remove(stdin_fd)
        if client.fileno() in readable:
            frame = client.read_frame()
            if frame is None:
                return None
            result = on_frame(frame)
            if result is not None:
                return result


@contextmanager
def raw_terminal(client: Any, fd: int, send_size_now: bool) -> Iterator[None]:
    """fd, a terminal, raw while inside (the other side's pty does the line
    discipline); window size changes go to client.resize, the current size first
    when send_size_now. The terminal and the SIGWINCH handler are restored after."""
    import signal
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    previous = signal.signal(signal.SIGWINCH, lambda *_: send_size(client, fd))
    tty.setraw(fd)
    if send_size_now:
        send_size(client, fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)


def send_size(client: Any, fd: int) -> None:
    """The real window size of fd (not $LINES/$COLUMNS, which shutil prefers)."""
    try:
        size = os.get_terminal_size(fd)
        client.resize(size.lines, size.columns)
    except OSError:
        pass
