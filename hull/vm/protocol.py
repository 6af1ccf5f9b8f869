"""The host side of the guest agent's wire protocol (guest/hull-agent.c).

Host to guest: one JSON object per line. Guest to host: frames in Docker's stdcopy
layout (stream byte, three zero bytes, 4-byte big-endian length, payload); stream 1
is stdout, 2 stderr, 3 a JSON control message ("ready", "exit", "error").
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from hull.errors import HullError

STDOUT, STDERR, CONTROL = 1, 2, 3
HEADER = struct.Struct(">B3xI")
MAX_FRAME = 16 << 20


class AgentGone(HullError):
    """The agent's channel closed: the guest powered off, crashed or never booted."""


@dataclass(frozen=True)
class RunRequest:
    """One process for the agent to run in the guest's root (an OCI process, in short)."""

    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    gids: list[int] = field(default_factory=list)
    hostname: str | None = None
    realtime_ns: int | None = None  # sets the guest clock first (a restored VM's is stale)

    def encode(self) -> bytes:
        if not self.args:
            raise HullError("no command to run in the VM")
        body: dict[str, Any] = {
            "type": "run",
            "args": self.args,
            "env": self.env,
            "cwd": self.cwd,
            "uid": self.uid,
            "gid": self.gid,
            "gids": self.gids,
        }
        if self.hostname is not None:
            body["hostname"] = self.hostname
        if self.realtime_ns is not None:
            body["realtime_ns"] = self.realtime_ns
        return encode_message(body)


def encode_message(body: dict[str, Any]) -> bytes:
    # ensure_ascii: the agent decodes \\u escapes itself; NUL cannot pass through C strings.
    for text in _strings(body):
        if "\0" in text:
            raise HullError("arguments and environment may not contain NUL bytes")
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def encode_frame(stream: int, payload: bytes) -> bytes:
    """A frame as the agent writes it (used by tests and fakes)."""
    return HEADER.pack(stream, len(payload)) + payload


class FrameReader:
    """Reads whole frames off the agent's socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def read_frame(self) -> tuple[int, bytes]:
        header = self._read_exactly(HEADER.size)
        stream, length = HEADER.unpack(header)
        if length > MAX_FRAME or stream not in (STDOUT, STDERR, CONTROL):
            raise HullError(f"garbled frame from the guest agent (stream {stream}, {length} bytes)")
        return stream, self._read_exactly(length)

    def read_control(self) -> dict[str, Any]:
        """The next control message; output frames before it are an error here."""
        stream, payload = self.read_frame()
        if stream != CONTROL:
            raise HullError("the guest agent sent output when a control message was due")
        return parse_control(payload)

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self._sock.recv(max(65536, size - len(self._buffer)))
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
        raise HullError(f"garbled control message from the guest agent: {payload[:200]!r}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise HullError(f"garbled control message from the guest agent: {payload[:200]!r}")
    return message
