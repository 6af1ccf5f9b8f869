"""What v1 and v2 managers share: identity, pid walking, signalling and teardown."""

from __future__ import annotations

import time

from hull.errors import HullError, KernelError
from hull.runtime import posixos as os
from hull.runtime.linux.cgroups.files import (
    CgroupFiles,
    read_pids,
    remove_tree,
    remove_with_retry,
)
from hull.runtime.linux.cgroups.paths import path_components

# Only mypy reads these: `typing`, `abc`, `contextlib` and `signal` together cost more
# than the cgroup setup itself on the start path of `hull-runtime run`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from hull.runtime.linux.cgroups.mounts import CgroupMount

FREEZE_TIMEOUT = 5.0
SIGKILL = 9


def wait_until(
    check: Callable[[], bool], timeout: float, poke: Callable[[], None] | None = None
) -> bool:
    """Poll check() until it holds or timeout passes; poke() is re-run every ~100 ms
    (the v1 freezer sometimes needs FROZEN written again to finish)."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    last_poke = time.monotonic()
    while True:
        if check():
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        if poke is not None and now - last_poke >= 0.1:
            poke()
            last_poke = now
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


class CgroupManager:
    """One container's cgroup in every hierarchy of the host's layout.

    Lifecycle: create(resources) makes the dirs and checks the controllers;
    set(resources) writes the limits (call it before apply so the process never
    runs unconfined; `update` calls it again); apply(pid) moves a process in;
    destroy() removes the dirs. A manager rebuilt from the same path in another
    process (`hull-runtime delete`) finds the same dirs. V1Manager and V2Manager fill
    in the methods that raise NotImplementedError here.
    """

    layout: str

    def __init__(
        self, path: str, mounts: list[CgroupMount], files: CgroupFiles | None = None
    ) -> None:
        self.path = path
        self.mounts = mounts
        self.files = files or CgroupFiles()
        # Dirs this object created, in creation order; destroy also tries them so
        # an emptied /hull parent made by us does not linger.
        self._created: list[str] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r})"

    # -- the shape of the cgroup ---------------------------------------------------

    def dir_in(self, mountpoint: str) -> str:
        """This cgroup's directory in the hierarchy mounted at mountpoint."""
        return os.path.join(mountpoint, *path_components(self.path))

    def self_join_files(self) -> list[str]:
        """Files the process itself writes "0" to (v1 `tasks`); none on v2."""
        return []

    def late_join_dirs(self) -> list[str]:
        """Dirs whose cgroup.procs the parent writes the pid to."""
        return list(self.hierarchy_dirs().values())

    def hierarchy_dirs(self) -> dict[str, str]:
        """mountpoint -> this cgroup's dir there, for every hierarchy it lives in."""
        raise NotImplementedError

    def controller_paths(self) -> dict[str, str]:
        """controller name -> host dir of this cgroup (v1), or {"": dir} on v2."""
        raise NotImplementedError

    def _pids_dir(self) -> str | None:
        """The dir whose subtree lists every process of the container."""
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------

    def create(self, resources: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def apply(self, pid: int) -> None:
        raise NotImplementedError

    def set(self, resources: dict[str, Any]) -> None:
        raise NotImplementedError

    def freeze(self) -> None:
        raise NotImplementedError

    def thaw(self) -> None:
        raise NotImplementedError

    def frozen(self) -> bool:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def oom_killed(self) -> bool:
        raise NotImplementedError

    def _can_freeze(self) -> bool:
        return False

    def exists(self) -> bool:
        """True while the cgroup dir exists in any of its hierarchies."""
        return any(self.files.exists(d) for d in self.hierarchy_dirs().values())

    def pids(self) -> list[int]:
        """Every pid in the cgroup and its sub-cgroups, sorted, no duplicates."""
        top = self._pids_dir()
        if top is None:
            return []
        found: set[int] = set()
        stack = [top]
        while stack:
            current = stack.pop()
            found.update(read_pids(self.files, current))
            stack.extend(os.path.join(current, name) for name in self.files.subdirs(current))
        return sorted(found)

    def kill_all(self, sig: int) -> None:
        """Signal every process, frozen first so none can fork past the signal.

        A SIGKILL leaves the cgroup thawed (frozen tasks only die once thawed);
        other signals restore the frozen state the container had before.
        """
        if not self.exists():
            return
        was_frozen = False
        froze = False
        if self._can_freeze():
            try:
                was_frozen = self.frozen()
                if not was_frozen:
                    self.freeze()
                    froze = True
            except HullError:
                froze = False
        try:
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if froze or (was_frozen and sig == SIGKILL):
                self.thaw()

    def _remember(self, path: str, created: bool) -> None:
        if created:
            self._created.append(path)

    def _mkdirs(self, mountpoint: str) -> str:
        """mkdir -p this cgroup under mountpoint, remembering what was new.

        The leaf first: its parents (/hull, a test's own parent) usually exist, and
        walking down costs a failing mkdir per level in every hierarchy, every start.
        """
        leaf = os.path.join(mountpoint, *path_components(self.path))
        if leaf != mountpoint:
            try:
                self._remember(leaf, self.files.mkdir(leaf))
                return leaf
            except FileNotFoundError:
                pass  # a parent is missing: make the path level by level
            except OSError as e:
                raise KernelError(f"cannot create cgroup {leaf}: {e.strerror}") from e
        current = mountpoint
        for name in path_components(self.path):
            current = os.path.join(current, name)
            try:
                self._remember(current, self.files.mkdir(current))
            except OSError as e:
                raise KernelError(f"cannot create cgroup {current}: {e.strerror}") from e
        return current

    def _undo_create(self) -> None:
        """Remove what create() made, deepest first, best effort."""
        for path in reversed(self._created):
            # plain rmdir, never recursive: another container may have made a
            # sibling under a parent we created in the meantime
            try:
                self.files.rmdir(path)
            except OSError:
                pass
        self._created.clear()

    def destroy(self) -> None:
        """rmdir the cgroup (and any child cgroups) in every hierarchy, deepest first.

        Already-gone dirs are fine. Parents this object created are removed too when
        empty. Raises KernelError if a dir stays busy (processes still inside).
        """
        failures: list[str] = []
        for directory in self.hierarchy_dirs().values():
            try:
                remove_with_retry(self.files, directory)
            except KernelError as e:
                failures.append(e.message)
        if failures:
            pids = ", ".join(str(p) for p in self.pids()) or "none listed"
            raise KernelError("; ".join(failures) + f" (pids still inside: {pids})")
        self._remove_created_parents()

    def try_destroy(self) -> bool:
        """destroy() for a cgroup expected empty, without waiting: False as soon as a
        dir is busy (processes still inside), for the caller to kill and destroy()."""
        for directory in self.hierarchy_dirs().values():
            try:
                remove_tree(self.files, directory)
            except OSError:
                return False
        self._remove_created_parents()
        return True

    def _remove_created_parents(self) -> None:
        leaves = set(self.hierarchy_dirs().values())
        for path in sorted(self._created, key=lambda p: p.count("/"), reverse=True):
            if path in leaves:
                continue
            try:
                self.files.rmdir(path)
            except OSError:
                pass  # a shared parent still in use stays
        self._created.clear()
