"""The host side of the guest agent's wire protocol (guest/hull-agent.c).

Both directions carry frames in Docker's stdcopy layout with a process id in its three
spare bytes: a stream byte, a 3-byte big-endian process id, a 4-byte big-endian
length, then the payload. Several processes run at once in one guest (the main
process and `hull exec`s), so every frame says which one it is about.

Host to guest: stream 0 is stdin for a process (an empty payload closes it), stream 3
a JSON request ("run", "signal", "resize", "stats", "poweroff"). Guest to host:
streams 1 and 2 are a process's stdout and stderr, stream 3 a JSON control message
("ready", "started", "exit", "error", "stats").

The VM supervisor (hull.vm.supervisor) speaks the same frames to its own clients
on its control socket.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hull.errors import HullError

STDIN, STDOUT, STDERR, CONTROL = 0, 1, 2, 3
HEADER = struct.Struct(">II")  # (stream << 24 | process id, length)
MAX_FRAME = 1 << 20  # the agent's limit for a frame from the host; output frames are smaller
MAX_ID = (1 << 24) - 1
GUEST_STREAMS = frozenset((STDOUT, STDERR, CONTROL))
HOST_STREAMS = frozenset((STDIN, CONTROL))


class AgentGone(HullError):
    """The agent's channel closed: the guest powered off, crashed or never booted."""


class Frame(NamedTuple):
    stream: int
    payload: bytes
    id: int = 0


@dataclass(frozen=True)
class RunRequest:
    """One process for the agent to run in the guest's root (an OCI process, in short).

    id names the process in every frame about it. main marks the container's main
    process: when it ends, the agent ends every other process in the guest. mounts
    are virtiofs shares to mount first, as "TAG rw|ro /target". interfaces and files
    (the main process only) are the guest's network, as "IFNAME MAC ADDR/PREFIX
    GATEWAY|- MTU", and files of its root written first, as "PATH\nCONTENT"
    (hull.vm.guestnet makes both).
    """

    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    gids: list[int] = field(default_factory=list)
    hostname: str | None = None
    realtime_ns: int | None = None  # sets the guest clock first (a restored VM's is stale)
    id: int = 1
    main: bool = True
    tty: bool = False
    stdin: bool = False
    rows: int = 0
    cols: int = 0
    mounts: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        if not self.args:
            raise HullError("no command to run in the VM")
        check_id(self.id)
        body: dict[str, Any] = {
            "type": "run",
            "id": self.id,
            "args": self.args,
            "env": self.env,
            "cwd": self.cwd,
            "uid": self.uid,
            "gid": self.gid,
            "gids": self.gids,
            "main": self.main,
            "tty": self.tty,
            "stdin": self.stdin,
        }
        if self.hostname is not None:
            body["hostname"] = self.hostname
        if self.realtime_ns is not None:
            body["realtime_ns"] = self.realtime_ns
        if self.rows > 0 and self.cols > 0:
            body["rows"], body["cols"] = self.rows, self.cols
        if self.mounts:
            body["mounts"] = self.mounts
        if self.interfaces:
            body["interfaces"] = self.interfaces
        if self.files:
            body["files"] = self.files
        return body

    def encode(self) -> bytes:
        """The request as one control frame."""
        return encode_control(self.body(), self.id)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> RunRequest:
        """The inverse of body() (the supervisor stores its main process this way)."""
        known = {k: v for k, v in body.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def check_id(process_id: int) -> None:
    if not 0 < process_id <= MAX_ID:
        raise HullError(f"a process id must be between 1 and {MAX_ID}, not {process_id}")


def encode_control(body: dict[str, Any], process_id: int = 0) -> bytes:
    """A JSON message as a control frame.

    ensure_ascii: the agent decodes \\u escapes itself; NUL cannot pass through C strings.
    """
    for text in _strings(body):
        if "\0" in text:
            raise HullError("arguments and environment may not contain NUL bytes")
    payload = json.dumps(body, separators=(",", ":")).encode()
    return encode_frame(CONTROL, payload, process_id)


def encode_message(body: dict[str, Any]) -> bytes:
    """A request without a process of its own ("poweroff")."""
    return encode_control(body, int(body.get("id", 0)))


def signal_request(process_id: int, signal: int) -> bytes:
    return encode_control({"type": "signal", "id": process_id, "signal": signal}, process_id)


def stats_request(request_id: int) -> bytes:
    """Ask the agent for the guest's memory, CPU, disk and process table (a "stats" reply)."""
    return encode_control({"type": "stats", "id": request_id}, request_id)


def resize_request(process_id: int, rows: int, cols: int) -> bytes:
    body = {"type": "resize", "id": process_id, "rows": rows, "cols": cols}
    return encode_control(body, process_id)


def stdin_frames(process_id: int, data: bytes) -> list[bytes]:
    """data as stdin frames of at most MAX_FRAME bytes; b"" is the end of input."""
    if not data:
        return [encode_frame(STDIN, b"", process_id)]
    return [
        encode_frame(STDIN, data[i : i + MAX_FRAME], process_id)
        for i in range(0, len(data), MAX_FRAME)
    ]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def encode_frame(stream: int, payload: bytes, process_id: int = 0) -> bytes:
    """One frame (the agent writes the same layout)."""
    if not 0 <= process_id <= MAX_ID:
        raise HullError(f"process id {process_id} out of range")
    return HEADER.pack((stream << 24) | process_id, len(payload)) + payload


class FrameReader:
    """Reads whole frames off a socket (the agent's channel, or a supervisor client's)."""

    def __init__(self, sock: socket.socket, streams: frozenset[int] = GUEST_STREAMS) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._streams = streams

    def read_frame(self) -> Frame:
        header = self._read_exactly(HEADER.size)
        word, length = HEADER.unpack(header)
        stream, process_id = word >> 24, word & MAX_ID
        if length > 16 * MAX_FRAME or stream not in self._streams:
            raise HullError(f"garbled frame (stream {stream}, {length} bytes)")
        return Frame(stream, self._read_exactly(length), process_id)

    def read_control(self) -> dict[str, Any]:
        """The next control message; output frames before it are an error here."""
        frame = self.read_frame()
        if frame.stream != CONTROL:
            raise HullError("the guest agent sent output when a control message was due")
        return parse_control(frame.payload)

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            try:
                chunk = self._sock.recv(max(65536, size - len(self._buffer)))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise AgentGone("the guest agent's channel closed")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def parse_control(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload)
    except ValueError as exc:
        raise HullError(f"garbled control message: {payload[:200]!r}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise HullError(f"garbled control message: {payload[:200]!r}")
    return message
