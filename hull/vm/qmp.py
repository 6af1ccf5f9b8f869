"""A small synchronous QMP client for the warm-start path: save and restore a VM.

The qemu.qmp library (used for the rest of the lifecycle) costs about 35 ms to import
and runs an asyncio loop; a restore that must finish in a tenth of a second only
needs five commands and one event, so it speaks QMP's line-delimited JSON directly.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from typing import Any

from hull.errors import HullError


class QmpError(HullError):
    """QEMU answered a QMP command with an error, or the monitor went away."""


class QmpChannel:
    """One negotiated QMP connection (QEMU connected to a socket the host listened on)."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._events: deque[dict[str, Any]] = deque()
        self._timeout = timeout
        greeting = self._read_message(time.monotonic() + timeout)
        if "QMP" not in greeting:
            raise QmpError(f"QEMU's monitor did not greet as QMP: {greeting}")
        self.execute("qmp_capabilities")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a command and return its result; events seen meanwhile are kept."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise QmpError(f"QEMU's monitor went away ({command}): {exc}") from exc
        deadline = time.monotonic() + self._timeout
        while True:
            reply = self._read_message(deadline)
            if "event" in reply:
                self._events.append(reply)
            elif "error" in reply:
                error = reply["error"]
                raise QmpError(f"QEMU refused {command}: {error.get('desc', error)}")
            elif "return" in reply:
                return reply["return"]

    def wait_migration(self, timeout: float) -> None:
        """Until a MIGRATION event says completed (needs the "events" capability)."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._events.popleft() if self._events else self._read_message(deadline)
            if event.get("event") != "MIGRATION":
                continue
            status = event.get("data", {}).get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise QmpError(f"the VM's migration {status}")

    def close(self) -> None:
        self._sock.close()

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    raise QmpError(f"garbled QMP message: {line[:200]!r}") from exc
                if isinstance(message, dict):
                    return message
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QmpError("QEMU's monitor did not answer in time")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise QmpError("QEMU's monitor did not answer in time") from exc
            except OSError as exc:
                raise QmpError(f"QEMU's monitor went away: {exc}") from exc
            if not chunk:
                raise QmpError("QEMU's monitor closed the connection")
            self._buffer += chunk
