"""Where Hull keeps its files.

Roots are configurable so tests (and several Hull instances) never touch a
user's real state: HULL_ROOT and HULL_RUNROOT override the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

from hull.records import dataclass

DEFAULT_ROOT = "/var/lib/hull"
DEFAULT_RUNROOT = "/run/hull"


@dataclass(frozen=True)
class HullPaths:
    """The persistent root (/var/lib/hull) and the volatile one (/run/hull)."""

    root: Path
    runroot: Path

    @classmethod
    def from_env(cls, root: str | None = None, runroot: str | None = None) -> HullPaths:
        return cls(
            Path(root or os.environ.get("HULL_ROOT") or DEFAULT_ROOT),
            Path(runroot or os.environ.get("HULL_RUNROOT") or DEFAULT_RUNROOT),
        )

    @property
    def db(self) -> Path:
        return self.root / "hull.db"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def ingest(self) -> Path:
        return self.root / "ingest"

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    @property
    def containers(self) -> Path:
        return self.root / "containers"

    @property
    def vm(self) -> Path:
        return self.root / "vm"

    @property
    def runtime_state(self) -> Path:
        """--root handed to hull-runtime by the engine."""
        return self.runroot / "runtime"
