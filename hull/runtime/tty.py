"""`hull-runtime run` with a terminal and no --console-socket: proxy our own tty.

runc does the same: the container's pty master comes back over an internal
socketpair, and the runtime copies bytes between its stdio and the master
until the container closes its side, in raw mode when stdin is a terminal.
"""

from __future__ import annotations

import os
import select


def receive_master(sock_fd: int) -> int:
    import socket

    sock = socket.socket(fileno=sock_fd)
    try:
        _, fds, _, _ = socket.recv_fds(sock, 1024, 1)
    finally:
        sock.close()
    if not fds:
        raise OSError("the container sent no terminal")
    return fds[0]


def copy_window_size(src_fd: int, master_fd: int) -> None:
    import fcntl
    import termios

    try:
        size = fcntl.ioctl(src_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(master_fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def proxy(master_fd: int, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
    """Copy stdin -> master and master -> stdout until the container hangs up."""
    import _signal
    import termios
    import tty

    from hull.gc_pause import resume

    resume()  # the launcher paused collection for the start; this may run for days

    saved = None
    if os.isatty(stdin_fd):
        saved = termios.tcgetattr(stdin_fd)
        tty.setraw(stdin_fd)
        copy_window_size(stdin_fd, master_fd)
        _signal.signal(28, lambda *_: copy_window_size(stdin_fd, master_fd))  # SIGWINCH
    watch = [master_fd, stdin_fd]
    try:
        while True:
            readable, _, _ = select.select(watch, [], [])
            if master_fd in readable:
                try:
                    data = os.read(master_fd, 65536)
                except OSError:  # EIO: every slave fd is closed, the process is gone
                    break
                if not data:
                    break
                os.write(stdout_fd, data)
            if stdin_fd in readable:
                data = os.read(stdin_fd, 65536)
                if data:
                    os.write(master_fd, data)
                else:
                    watch.remove(stdin_fd)
                    os.write(master_fd, b"\x04")  # EOF on our stdin: ^D for the container
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        os.close(master_fd)
