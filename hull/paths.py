"""Where Hull keeps its files.

Roots are configurable so tests (and several Hull instances) never touch a
user's real state: HULL_ROOT and HULL_RUNROOT override the defaults.

Paths are plain strings: `hull run` imports this, and pathlib (with the re,
enum and urllib.parse it imports) would cost it ~6 ms. Code off that path wraps
them in pathlib.Path where that reads better.
"""

from __future__ import annotations

import os

from hull.records import dataclass

DEFAULT_ROOT = "/var/lib/hull"
DEFAULT_RUNROOT = "/run/hull"


@dataclass(frozen=True)
class HullPaths:
    """The persistent root (/var/lib/hull) and the volatile one (/run/hull).

    Either may be given as any path-like; both are kept as str."""

    root: str
    runroot: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.fspath(self.root))
        object.__setattr__(self, "runroot", os.fspath(self.runroot))

    @classmethod
    def from_env(cls, root: str | None = None, runroot: str | None = None) -> HullPaths:
        return cls(
            root or os.environ.get("HULL_ROOT") or DEFAULT_ROOT,
            runroot or os.environ.get("HULL_RUNROOT") or DEFAULT_RUNROOT,
        )

    @property
    def db(self) -> str:
        return os.path.join(self.root, "hull.db")

    @property
    def blobs(self) -> str:
        return os.path.join(self.root, "blobs")

    @property
    def ingest(self) -> str:
        return os.path.join(self.root, "ingest")

    @property
    def layers(self) -> str:
        return os.path.join(self.root, "layers")

    @property
    def containers(self) -> str:
        return os.path.join(self.root, "containers")

    @property
    def vm(self) -> str:
        return os.path.join(self.root, "vm")

    @property
    def runtime_state(self) -> str:
        """--root handed to hull-runtime by the engine."""
        return os.path.join(self.runroot, "runtime")
