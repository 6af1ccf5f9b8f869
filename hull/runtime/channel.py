"""A line protocol over two pipes between the runtime and its forked children.

Pipes rather than a socketpair: `import socket` costs milliseconds on the
start path and pipes are all a parent and child need. No `from __future__`:
the launcher imports this module before it forks stage 1 (hull.runtime.prefork).
"""

import marshal

from hull.runtime import posixos as os


class ChannelClosed(Exception):
    """The other side exited (or exec'd) without saying more."""


class Channel:
    """One end: reads lines from rfd, writes lines to wfd."""

    __slots__ = ("rfd", "wfd", "_buf")

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self._buf = b""

    @classmethod
    def pair(cls) -> "tuple[Channel, Channel]":
        """(parent end, child end); every fd is close-on-exec."""
        down_r, down_w = os.pipe2(os.O_CLOEXEC)
        up_r, up_w = os.pipe2(os.O_CLOEXEC)
        return cls(up_r, down_w), cls(down_r, up_w)

    def send(self, kind: str, payload: str = "") -> None:
        line = (kind + (" " + payload.replace("\n", " ") if payload else "") + "\n").encode()
        try:
            while line:  # a payload above the pipe's buffer may be written in parts
                line = line[os.write(self.wfd, line) :]
        except BrokenPipeError:
            raise ChannelClosed() from None

    def send_data(self, kind: str, data: "dict | list") -> None:
        """Send plain data (dicts, lists, str, int, bool, None) to our own other end.

        marshal, hex-encoded for the line protocol: builtin, so a child decodes it
        without importing a JSON codec (~0.3 ms of a container start). Only ever
        between two processes of one runtime invocation, never from outside.
        """
        self.send(kind, marshal.dumps(data).hex())

    def expect_data(self, kind: str) -> "dict":  # what send_data sent: a dict here
        return marshal.loads(bytes.fromhex(self.expect(kind)))

    def recv(self) -> tuple[str, str]:
        while b"\n" not in self._buf:
            chunk = os.read(self.rfd, 65536)
            if not chunk:
                raise ChannelClosed()
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        kind, _, payload = line.decode().partition(" ")
        return kind, payload

    def expect(self, kind: str) -> str:
        got, payload = self.recv()
        if got == "error":
            raise ChildError(payload)
        if got != kind:
            raise ChildError(f"protocol error: expected {kind!r}, got {got!r}")
        return payload

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


class ChildError(Exception):
    """A child reported a failure; the message is meant for people."""
