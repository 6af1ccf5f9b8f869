"""The client side of a VM supervisor's control socket (<shim dir>/vm.sock).

Requests are the agent's frames (hull.vm.protocol): the client's first frame is a
JSON control message, answered by one control message ("ok" or "error"), except
"exec", after which the connection carries that process's streams until its "exit".

    {"type": "start"}                          run the main process (once)
    {"type": "signal", "signal": N}            to the main process (9: then power off)
    {"type": "pause"} / {"type": "resume"}     stop / continue the vCPUs
    {"type": "stats"}                          the guest's figures and the VM's host CPU
    {"type": "exec", ...RunRequest.body()}     a new process; its id is the supervisor's
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from hull.errors import HullError, StateError
from hull.vm.protocol import (
    GUEST_STREAMS,
    Frame,
    FrameReader,
    encode_control,
    parse_control,
    resize_request,
    stdin_frames,
)

CONTROL_SOCKET = "vm.sock"
REQUEST_TIMEOUT = 30.0


def control_socket(socket_dir: str | Path) -> str:
    return os.path.join(socket_dir, CONTROL_SOCKET)


def connect(socket_dir: str | Path, timeout: float | None = REQUEST_TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(control_socket(socket_dir))
    except OSError:
        sock.close()
        raise StateError("the microVM's supervisor is not running") from None
    return sock


def request(
    socket_dir: str | Path, body: dict[str, Any], timeout: float = REQUEST_TIMEOUT
) -> dict[str, Any]:
    """One request and its answer; HullError with the supervisor's message if it refused."""
    with connect(socket_dir, timeout) as sock:
        try:
            sock.sendall(encode_control(body))
            reply = FrameReader(sock).read_control()
        except (OSError, HullError) as exc:
            text = exc.message if isinstance(exc, HullError) else str(exc)
            raise StateError(f"the microVM's supervisor did not answer: {text}") from None
    if reply.get("type") == "error":
        raise HullError(str(reply.get("message") or "the microVM's supervisor refused"))
    return reply


class ExecClient:
    """One `exec` connection: the process's frames in, stdin and resizes out."""

    def __init__(self, socket_dir: str | Path, body: dict[str, Any]) -> None:
        self._sock = connect(socket_dir, timeout=REQUEST_TIMEOUT)
        try:
            self._sock.sendall(encode_control({**body, "type": "exec"}))
            self._sock.settimeout(None)
        except OSError as exc:
            self._sock.close()
            raise StateError(f"the microVM's supervisor did not answer: {exc}") from None
        self._reader = FrameReader(self._sock, GUEST_STREAMS)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_frame(self) -> Frame | None:
        """The next frame; None once the supervisor hung up."""
        try:
            return self._reader.read_frame()
        except HullError:
            return None

    def send_stdin(self, data: bytes) -> None:
        for frame in stdin_frames(0, data):
            self._sock.sendall(frame)

    def close_stdin(self) -> None:
        """End of input: an empty stdin frame (stdin_frames)."""
        self.send_stdin(b"")

    def resize(self, rows: int, cols: int) -> None:
        self._sock.sendall(resize_request(0, rows, cols))

    def signal(self, signum: int) -> None:
        body = {"type": "signal", "signal": signum}
        self._sock.sendall(encode_control(body))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ExecClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def control_message(frame: Frame) -> dict[str, Any]:
    return parse_control(frame.payload)
