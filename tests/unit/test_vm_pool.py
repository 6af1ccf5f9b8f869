"""The microVM pool's bookkeeping without QEMU: size, keys, adopted processes, the sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hull.errors import ConfigError, HullError
from hull.paths import HullPaths
from hull.vm import pool
from hull.vm.pool import (
    ENTRY_FILE,
    OWNER_FILE,
    AdoptedProcess,
    pool_key,
    pool_size,
    reconcile,
    set_pool_size,
)

TEMPLATE = "t" * 24
CHAIN = "sha256:" + "c" * 64


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HullPaths:
    monkeypatch.delenv(pool.POOL_ENV, raising=False)
    result = HullPaths(tmp_path / "lib", tmp_path / "run")
    Path(result.runroot).mkdir(parents=True)
    return result


@pytest.fixture
def sleeper():
    """A real process standing in for a pooled QEMU; killed afterwards if still there."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def identity(pid: int) -> list[int]:
    return pool._identity(pid)


def dead_identity() -> list[int]:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return [proc.pid, 12345]


def make_template(paths: HullPaths, key: str = TEMPLATE) -> None:
    directory = Path(paths.vm) / "templates" / key
    directory.mkdir(parents=True)
    (directory / "complete").write_text("")


def make_entry(paths: HullPaths, qemu: list[int], key: str | None = None, name: str = "") -> Path:
    key_dir = pool.pool_root(paths) / (key or pool_key(TEMPLATE, CHAIN))
    directory = key_dir / (name or f"{time.time_ns():020d}")
    directory.mkdir(parents=True)
    record = {"qemu": qemu, "shape": ["tcg", 128, 1], "created": time.time()}
    (directory / ENTRY_FILE).write_text(json.dumps(record))
    return directory


def wait_dead(proc: subprocess.Popen[bytes]) -> int:
    return proc.wait(timeout=5)


# ---------------------------------------------------------------------- size


def test_the_pool_is_off_by_default(paths: HullPaths) -> None:
    assert pool_size(paths) == 0


def test_size_comes_from_the_environment_before_the_setting(
    paths: HullPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_pool_size(paths, 3)
    assert pool_size(paths) == 3
    monkeypatch.setenv(pool.POOL_ENV, "1")
    assert pool_size(paths) == 1
    monkeypatch.setenv(pool.POOL_ENV, "")
    assert pool_size(paths) == 3


@pytest.mark.parametrize("value", ["two", "-1", str(pool.MAX_SIZE + 1)])
def test_bad_sizes_are_refused(
    paths: HullPaths, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(pool.POOL_ENV, value)
    with pytest.raises(ConfigError, match=pool.POOL_ENV):
        pool_size(paths)


def test_set_pool_size_refuses_out_of_range(paths: HullPaths) -> None:
    with pytest.raises(ConfigError):
        set_pool_size(paths, pool.MAX_SIZE + 1)
    assert pool_size(paths) == 0


def test_take_costs_nothing_while_the_pool_is_off(paths: HullPaths) -> None:
    # No assets, no template: take must return before it needs any of them.
    assert pool.take(paths, None, None, CHAIN) is None  # type: ignore[arg-type]
    assert not pool.pool_root(paths).exists()


def test_take_needs_an_image(paths: HullPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pool.POOL_ENV, "2")
    assert pool.take(paths, None, None, None) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------- keys


def test_pool_key_names_template_and_image() -> None:
    key = pool_key(TEMPLATE, CHAIN)
    assert key == f"{TEMPLATE}-{'c' * 20}"
    assert pool_key(TEMPLATE, "c" * 64) == key
    assert pool_key("u" * 24, CHAIN) != key


def test_image_disk_is_the_root_disk_cache_entry(paths: HullPaths) -> None:
    from hull.vm.rootdisk import disks_dir

    assert pool.image_disk(paths, CHAIN) == disks_dir(paths.vm) / f"{'c' * 64}.erofs"


# ---------------------------------------------------------------------- processes


def test_adopted_process_polls_kills_and_waits(sleeper) -> None:
    proc = sleeper()
    adopted = AdoptedProcess.open(proc.pid, pool._start_time(proc.pid))
    assert adopted.pid == proc.pid
    assert adopted.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        adopted.wait(0.05)
    adopted.kill()
    assert wait_dead(proc) == -signal.SIGKILL  # the real parent sees the kill
    assert adopted.wait(5) == -signal.SIGKILL
    assert adopted.poll() == -signal.SIGKILL
    adopted.kill()  # once gone, a no-op


def test_adopting_a_gone_or_reused_pid_fails(sleeper) -> None:
    pid, _ = dead_identity()
    with pytest.raises(HullError, match="gone"):
        AdoptedProcess.open(pid, 1)
    proc = sleeper()
    with pytest.raises(HullError, match="gone"):  # same pid, another start time
        AdoptedProcess.open(proc.pid, pool._start_time(proc.pid) + 1)


def test_a_zombie_is_not_alive() -> None:
    proc = subprocess.Popen(["true"])
    start = pool._start_time(proc.pid)
    deadline = time.monotonic() + 5
    while pool._alive(proc.pid, start) and time.monotonic() < deadline:
        time.sleep(0.01)  # exits, stays a zombie until waited for
    assert not pool._alive(proc.pid, start)
    proc.wait()


# ---------------------------------------------------------------------- sweep


def test_reconcile_keeps_live_entries_up_to_the_size(
    paths: HullPaths, sleeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_template(paths)
    first, second = sleeper(), sleeper()
    make_entry(paths, identity(first.pid), name="1")
    make_entry(paths, identity(second.pid), name="2")
    monkeypatch.setenv(pool.POOL_ENV, "2")
    assert reconcile(paths) == 0
    assert len(pool.entries(paths)) == 2
    monkeypatch.setenv(pool.POOL_ENV, "1")
    assert reconcile(paths) == 1  # the older one goes
    assert wait_dead(first) == -signal.SIGKILL
    assert [e.qemu_pid for e in pool.entries(paths)] == [second.pid]


def test_size_zero_stops_every_pooled_vm(paths: HullPaths, sleeper) -> None:
    make_template(paths)
    procs = [sleeper(), sleeper()]
    for index, proc in enumerate(procs):
        make_entry(paths, identity(proc.pid), name=str(index))
    set_pool_size(paths, 0)
    assert all(wait_dead(proc) == -signal.SIGKILL for proc in procs)
    assert pool.entries(paths) == []
    assert list(pool.pool_root(paths).iterdir()) == []


def test_dead_entries_are_removed(paths: HullPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    make_template(paths)
    dead = make_entry(paths, dead_identity())
    monkeypatch.setenv(pool.POOL_ENV, "2")
    reconcile(paths)
    assert not dead.exists()


def test_vms_of_a_rebuilt_template_are_discarded(
    paths: HullPaths, sleeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = sleeper()
    old = make_entry(paths, identity(proc.pid), key=pool_key("o" * 24, CHAIN))
    make_template(paths)  # only the current template exists now
    monkeypatch.setenv(pool.POOL_ENV, "2")
    assert reconcile(paths) == 1
    assert wait_dead(proc) == -signal.SIGKILL
    assert not old.parent.exists()


def test_a_taken_vm_whose_taker_died_is_stopped(paths: HullPaths, sleeper) -> None:
    proc = sleeper()
    run_dir = Path(paths.runroot) / "vm" / "abc123"
    run_dir.mkdir(parents=True)
    owner = {"owner": dead_identity(), "qemu": identity(proc.pid)}
    (run_dir / OWNER_FILE).write_text(json.dumps(owner))
    live_dir = Path(paths.runroot) / "vm" / "def456"
    live_dir.mkdir()
    other = sleeper()
    (live_dir / OWNER_FILE).write_text(
        json.dumps({"owner": identity(os.getpid()), "qemu": identity(other.pid)})
    )
    assert reconcile(paths) == 1
    assert wait_dead(proc) == -signal.SIGKILL
    assert not run_dir.exists()
    assert live_dir.exists() and other.poll() is None  # its taker (us) lives


def test_half_made_and_half_taken_entries_of_dead_processes_go(paths: HullPaths, sleeper) -> None:
    root = pool.pool_root(paths)
    making, taking = sleeper(), sleeper()
    building = root / "n-abc"
    building.mkdir(parents=True)
    (building / ENTRY_FILE).write_text(
        json.dumps({"owner": dead_identity(), "qemu": identity(making.pid)})
    )
    dead_pid, dead_start = dead_identity()
    claimed = root / f"c-{dead_pid}-{dead_start}-ffff"
    claimed.mkdir()
    (claimed / ENTRY_FILE).write_text(json.dumps({"qemu": identity(taking.pid)}))
    mine = root / f"c-{os.getpid()}-{pool._start_time(os.getpid())}-eeee"
    mine.mkdir()
    assert reconcile(paths) == 2
    assert wait_dead(making) == -signal.SIGKILL and wait_dead(taking) == -signal.SIGKILL
    assert not building.exists() and not claimed.exists()
    assert mine.exists()  # a live taker is adopting it


def test_least_recently_used_images_give_way(paths: HullPaths, sleeper) -> None:
    root = pool.pool_root(paths)
    procs = []
    for index in range(pool.MAX_IMAGES):
        proc = sleeper()
        procs.append(proc)
        entry = make_entry(paths, identity(proc.pid), key=pool_key(TEMPLATE, str(index) * 64))
        stamp = time.time() - 100 + index
        os.utime(entry.parent, (stamp, stamp))
    keep = pool_key(TEMPLATE, CHAIN)
    (root / keep).mkdir()
    pool._evict_images(root, keep=keep)
    assert wait_dead(procs[0]) == -signal.SIGKILL  # the oldest image's VM
    assert all(proc.poll() is None for proc in procs[1:])
    assert len(pool._key_dirs(root)) == pool.MAX_IMAGES


def test_the_engine_sweep_keeps_live_vms_whatever_the_size(paths: HullPaths, sleeper) -> None:
    make_template(paths)
    proc = sleeper()
    make_entry(paths, identity(proc.pid), name="1")
    dead = make_entry(paths, dead_identity(), name="2")
    assert pool_size(paths) == 0  # this process has no HULL_VM_POOL, the setting is off
    assert pool.sweep(paths) == 0
    assert proc.poll() is None
    assert [e.qemu_pid for e in pool.entries(paths)] == [proc.pid]
    assert not dead.exists()


def test_cli_pool_flags_parse() -> None:
    from hull.cli.main import parse

    parsed = parse(["vm", "pool", "--size", "2", "busybox"])
    assert not isinstance(parsed, str)
    args, function = parsed
    assert (args.size, args.images, args.memory, args.cpus) == (2, ["busybox"], 128, 1)
    assert function.__name__ == "pool"
