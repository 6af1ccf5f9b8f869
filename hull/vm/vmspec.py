"""What a supervised microVM runs: the engine writes it as <bundle>/vm.json, the VM
supervisor (hull.vm.supervisor) reads it.

It plays the part config.json plays for a container: everything decided at start
(the image's root, the VM's shape, the main process, the shared folders, the network
tap), so that the supervisor needs no database and no engine code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hull.errors import ConfigError
from hull.files import replace_text
from hull.vm.guestnet import GuestInterface
from hull.vm.protocol import RunRequest

SPEC_FILE = "vm.json"
MAX_SHARES = 32


@dataclass(frozen=True)
class ShareSpec:
    """A host directory mounted in the guest at target through virtiofs."""

    source: str
    target: str
    readonly: bool = False


@dataclass(frozen=True)
class VmSpec:
    root: str  # HullPaths.root and runroot: where kernels, templates and disks live
    runroot: str
    rootfs: str  # the image's merged root (made into the VM's erofs root disk)
    chain_id: str | None
    accel: str
    memory_mib: int
    cpus: int
    process: dict[str, Any]  # RunRequest.body() of the main process
    warm: bool = True
    shares: list[ShareSpec] = field(default_factory=list)
    # The tap behind the VM's network card (--network bridge|NAME); None: no network.
    # The guest's side of it travels in process (its "interfaces" and "files").
    interface: GuestInterface | None = None

    def main_request(self) -> RunRequest:
        return RunRequest.from_body(self.process)

    def mount_specs(self) -> list[str]:
        """The agent's "TAG rw|ro /target" for each share (tags are hullfs0, hullfs1...)."""
        return [
            f"{share_tag(i)} {'ro' if s.readonly else 'rw'} {s.target}"
            for i, s in enumerate(self.shares)
        ]

    def write(self, bundle: Path) -> Path:
        target = bundle / SPEC_FILE
        replace_text(target, json.dumps(asdict(self)))
        return target

    @classmethod
    def load(cls, bundle: Path) -> VmSpec:
        try:
            data = json.loads((bundle / SPEC_FILE).read_text())
            data["shares"] = [ShareSpec(**s) for s in data.get("shares") or []]
            if data.get("interface"):
                data["interface"] = GuestInterface(**data["interface"])
            spec = cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the VM's spec in {bundle}: {exc}") from exc
        if len(spec.shares) > MAX_SHARES:
            raise ConfigError(f"a microVM takes at most {MAX_SHARES} volumes")
        return spec


def share_tag(index: int) -> str:
    return f"hullfs{index}"
