"""Build the guest agent (guest/hull-agent.c) into a static binary, cached by source hash.

The agent runs inside the guest with nothing but the initramfs around it, so it is
linked statically; gcc is the only build tool it needs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hull.errors import HullError

AGENT_SOURCE = Path(__file__).resolve().parents[2] / "guest" / "hull-agent.c"
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-s")


def agent_binary(vm_root: Path, source: Path = AGENT_SOURCE) -> Path:
    """The built agent, compiled on first use or when its source (or the flags) change."""
    try:
        code = source.read_bytes()
    except OSError as exc:
        raise HullError(f"the guest agent source is missing: {exc}") from exc
    digest = hashlib.sha256(code + " ".join(CFLAGS).encode()).hexdigest()[:16]
    target = vm_root / "agent" / digest / "hull-agent"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".hull-agent-", dir=target.parent)
    os.close(fd)
    try:
        gcc = shutil.which("gcc") or "gcc"
        done = subprocess.run(
            [gcc, *CFLAGS, "-o", tmp, str(source)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise HullError(f"cannot build the guest agent:\n{done.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except OSError as exc:
        raise HullError(f"cannot build the guest agent (is gcc installed?): {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
