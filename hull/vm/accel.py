"""Choose the accelerator: KVM where it really boots the guest kernel, TCG otherwise.

/dev/kvm existing is not enough: a PVM host offers /dev/kvm yet cannot run Debian's
kernel (QEMU dies or stops with an emulation failure). So the first VM on a host
boots a probe guest under KVM, and the answer is cached per host, QEMU and guest
kernel in <vm>/accel.json. HULL_VM_ACCEL=kvm|tcg skips the probe.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

ACCEL_ENV = "HULL_VM_ACCEL"
TCG_NOTICE = (
    "KVM cannot boot the guest kernel on this host, so microVMs run under TCG "
    "(QEMU's software emulation): expect slower boots and workloads"
)


def host_key(kernel_version: str) -> str:
    """What the probe's answer depends on: host kernel, CPU, QEMU build, guest kernel."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    qemu = shutil.which("qemu-system-x86_64") or ""
    qemu_id = ""
    if qemu:
        st = os.stat(qemu)
        qemu_id = f"{st.st_size}:{st.st_mtime_ns}"
    return f"{platform.release()}|{cpu}|{qemu_id}|{kernel_version}"


def choose_accel(
    vm_root: Path,
    kernel_version: str,
    probe: Callable[[], bool],
    notice: Callable[[str], None],
) -> str:
    """ "kvm" or "tcg"; probe() boots a guest under KVM and says whether it came up."""
    forced = os.environ.get(ACCEL_ENV)
    if forced in ("kvm", "tcg"):
        return forced
    if not kvm_usable():
        notice("/dev/kvm is not usable, so microVMs run under TCG (QEMU's software emulation)")
        return "tcg"
    cache = vm_root / "accel.json"
    key = host_key(kernel_version)
    known = _load(cache)
    answer = known.get(key)
    if answer not in ("kvm", "tcg"):
        answer = "kvm" if probe() else "tcg"
        known[key] = answer
        _store(cache, known)
    if answer == "tcg":
        notice(TCG_NOTICE)
    return answer


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _load(cache: Path) -> dict[str, str]:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(cache: Path, data: dict[str, str]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".accel-", dir=cache.parent)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=1)
    os.replace(tmp, cache)
