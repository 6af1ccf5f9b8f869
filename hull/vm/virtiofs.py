"""Host directories in a microVM: one virtiofsd per shared folder (QEMU's own daemon).

virtiofsd serves one directory over a vhost-user socket that QEMU connects to; it
exits when QEMU hangs up, and dies with its supervisor (PR_SET_PDEATHSIG) like QEMU.
It maps the guest's RAM, so a VM with shares runs on a shared memfd (see
hull.vm.qemu) and boots cold: a warm restore's RAM is a private copy-on-write
mapping of the template, which a second process cannot share.

The C virtiofsd of QEMU 7.2 has no read-only mode: a read-only volume is mounted
read-only by the guest kernel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hull.errors import HullError
from hull.vm.qemu import Share

VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")
START_TIMEOUT = 5.0


def virtiofsd_binary() -> str:
    for candidate in VIRTIOFSD_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise HullError(
        "virtiofsd is not installed: volumes in microVMs need it (apt-get install qemu-system-x86)"
    )


def virtiofsd_command(binary: str, source: Path, socket: Path) -> list[str]:
    return [
        binary,
        f"--socket-path={socket}",
        "-o",
        f"source={source}",
        "-o",
        "sandbox=chroot",  # one process; namespaces would add a second one
        "-o",
        "cache=auto",
        "--rlimit-nofile=0",  # keep ours: raising it needs CAP_SYS_RESOURCE
    ]


@dataclass
class Virtiofsd:
    """One running virtiofsd and the share QEMU connects to."""

    share: Share
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, source: Path, tag: str, run_dir: Path) -> Virtiofsd:
        if not source.is_dir():
            raise HullError(f"cannot share {source} with the microVM: not a directory")
        socket = run_dir / f"{tag}.sock"
        log = open(run_dir / f"{tag}.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            process = subprocess.Popen(
                virtiofsd_command(virtiofsd_binary(), source, socket),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        daemon = cls(Share(tag, socket), process)
        try:
            daemon._wait_listening()
        except BaseException:
            daemon.stop()
            raise
        return daemon

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.share.socket.exists():
            if self.process.poll() is not None:
                raise HullError(f"virtiofsd for {self.share.tag} exited: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise HullError(f"virtiofsd for {self.share.tag} did not start in time")
            time.sleep(0.005)

    def _log_tail(self) -> str:
        try:
            text = (self.share.socket.parent / f"{self.share.tag}.log").read_text(errors="replace")
        except OSError:
            return ""
        return text.strip()[-500:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _die_with_parent() -> None:
    from hull.runtime.linux.syscalls import PR_SET_PDEATHSIG, prctl

    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
