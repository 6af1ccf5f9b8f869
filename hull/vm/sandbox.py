"""Run one process in a fresh microVM: warm restore by default, cold boot as the fallback.

run_in_vm is the one-shot path that the engine's `--isolation=vm` builds on. It
restores the VM from a warm-start template of its shape (hull.vm.template; built on
first use, about 2.5 s once) and falls back to a cold boot when no template can be
made or restored, or when warm=False or HULL_VM_WARM=0 ask for it. Whatever happens
(errors, Ctrl-C), QEMU is killed and the VM's run directory removed.

MicroVm, guest_assets and pick_accel live in hull.vm.microvm and are re-exported here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from hull.errors import HullError
from hull.paths import HullPaths
from hull.vm.guestnet import GuestInterface, file_specs
from hull.vm.microvm import (
    ByteSink,
    GuestAssets,
    MicroVm,
    VmShape,
    guest_assets,
    pick_accel,
    stderr_notice,
)
from hull.vm.protocol import RunRequest
from hull.vm.qemu import Nic, Share

__all__ = [
    "ByteSink",
    "GuestAssets",
    "MicroVm",
    "guest_assets",
    "pick_accel",
    "run_in_vm",
    "start_vm",
    "stderr_notice",
    "warm_start_enabled",
]

WARM_ENV = "HULL_VM_WARM"


def warm_start_enabled() -> bool:
    """Warm start is on unless HULL_VM_WARM=0 (or no/off/false) turns it off."""
    return os.environ.get(WARM_ENV, "1").strip().lower() not in ("0", "no", "off", "false")


def start_vm(
    paths: HullPaths,
    assets: GuestAssets,
    shape: VmShape,
    rootfs: Path,
    *,
    chain_id: str | None = None,
    warm: bool = True,
    notice: Callable[[str], None] = stderr_notice,
    run_dir: Path | None = None,
    shares: tuple[Share, ...] = (),
    nic: Nic | None = None,
) -> MicroVm:
    """A running VM on rootfs: restored from its shape's template, else booted cold.

    run_dir fixes the VM's run directory (it must not exist yet). A VM with shares
    (virtiofs) always boots cold: virtiofsd maps the guest's RAM, which must then be
    a shared memfd, and a restore's RAM is a private copy-on-write mapping. nic puts
    a host tap behind the VM's network card; a pooled VM's card already has the
    placeholder backend (no hot-plug to swap it), so a networked VM is restored.
    """
    if warm and not shares:
        from hull.vm import pool
        from hull.vm.template import ensure_template, restore_vm

        if nic is None or nic.tap is None:
            pooled = pool.take(paths, assets, shape, chain_id, run_dir)  # None: off or empty
            if pooled is not None:
                return pooled
        try:
            template = ensure_template(paths, assets, shape, notice)
            return restore_vm(paths, assets, shape, template, rootfs, chain_id, run_dir, nic)
        except HullError as exc:
            notice(f"microVM warm start failed, booting cold instead: {exc.message}")
    return MicroVm.boot(
        paths,
        assets,
        rootfs,
        accel=shape.accel,
        memory_mib=shape.memory_mib,
        cpus=shape.cpus,
        chain_id=chain_id,
        run_dir=run_dir,
        shares=shares,
        nic=nic,
    )


def run_in_vm(
    rootfs_dir: Path,
    args: list[str],
    env: list[str],
    cwd: str = "/",
    memory_mib: int = 128,
    cpus: int = 1,
    stdout: ByteSink | None = None,
    stderr: ByteSink | None = None,
    *,
    uid: int = 0,
    gid: int = 0,
    gids: list[int] | None = None,
    hostname: str | None = None,
    chain_id: str | None = None,
    paths: HullPaths | None = None,
    accel: str | None = None,
    warm: bool | None = None,
    notice: Callable[[str], None] = stderr_notice,
    interface: GuestInterface | None = None,
    files: dict[str, str] | None = None,
) -> int:
    """Start a microVM on rootfs_dir, run args in it, and return the exit code.

    stdout and stderr receive the process's output as it comes (default: this
    process's own). chain_id, when given, keeps the root disk cached for the next VM
    of the same image. accel forces "kvm" or "tcg" (default: probe, cached). warm
    (default: on unless HULL_VM_WARM=0) restores the VM from a template instead of
    booting it; a cold boot is the fallback either way. interface puts the VM on a
    host tap (made by the caller) with the guest's address; files are written into
    the guest's root first ({"/etc/hosts": text, ...}).
    """
    paths = paths or HullPaths.from_env()
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    request = RunRequest(
        args=args,
        env=env,
        cwd=cwd,
        uid=uid,
        gid=gid,
        gids=gids or [],
        hostname=hostname,
        interfaces=[interface.agent_spec()] if interface else [],
        files=file_specs(files or {}),
    )
    request.encode()  # reject a bad request before starting anything
    assets = guest_assets(paths)
    shape = VmShape(accel or pick_accel(paths, assets, notice), memory_mib, cpus)
    use_warm = warm_start_enabled() if warm is None else warm
    with start_vm(
        paths,
        assets,
        shape,
        rootfs_dir,
        chain_id=chain_id,
        warm=use_warm,
        notice=notice,
        nic=interface.nic() if interface else None,
    ) as vm:
        # The root disk is read-only and the writable layer a tmpfs: nothing in the
        # guest needs flushing, so QEMU is simply killed (close) after the run.
        return vm.run(request, out, err)
