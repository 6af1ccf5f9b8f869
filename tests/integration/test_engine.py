"""`hull` container verbs end to end, as root, on a bootstrapped busybox image."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.integration.engine_helpers import (
    cgroup_dirs_for,
    isolated_engine_session,
    overlay_mounts_under,
    require_vm_tools,
    wait_for,
)


@pytest.fixture
def hull(hull_paths, monkeypatch):
    yield from isolated_engine_session(hull_paths, monkeypatch)


def test_run_rm_returns_the_exit_code_and_leaves_nothing(hull):
    result = hull("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert hull.ok("ps", "-aq") == ""
    assert list((Path(hull.paths.root) / "containers").iterdir()) == []


def test_docker_exit_codes(hull):
    assert hull("run", "--rm", "busybox", "/no/such/cmd").returncode == 127
    assert hull("run", "--rm", "busybox", "/etc/passwd").returncode == 126
    missing = hull("run", "--rm", "--pull=never", "nosuchimage")
    assert missing.returncode == 125 and "no such image" in missing.stderr
    assert hull("run", "--bogus-flag", "busybox").returncode == 125
    assert hull.ok("ps", "-aq") == ""


def test_limits_are_visible_and_enforced(hull):
    out = hull.ok(
        "run",
        "--rm",
        "-m",
        "32m",
        "--pids-limit",
        "7",
        "--cpus",
        "0.5",
        "busybox",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
        " /sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    )
    assert out.split() == [str(32 << 20), "7", "50000"]
    oom = hull("run", "--rm", "-m", "16m", "--memory-swap", "16m", "busybox", "dd",
               "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")  # fmt: skip
    assert oom.returncode == 137


def test_detached_lifecycle_logs_exec_stop(hull):
    cid = hull.ok(
        "run", "-d", "--name", "web", "busybox", "sh", "-c",
        "trap 'echo bye; exit 0' TERM; echo hello; while :; do sleep 0.1; done",
    ).strip()  # fmt: skip
    assert len(cid) == 64
    ps = hull.ok("ps")
    assert "web" in ps and "Up" in ps
    wait_for(lambda: "hello" in hull.ok("logs", "web"))
    assert hull.ok("exec", "web", "sh", "-c", "echo $((6*7))").strip() == "42"
    assert hull("exec", "web", "sh", "-c", "exit 5").returncode == 5
    doc = json.loads(hull.ok("inspect", "web"))[0]
    assert doc["State"]["Running"] is True and doc["Name"] == "/web"
    assert doc["State"]["Pid"] > 0
    hull.ok("stop", "web")
    assert "bye" in hull.ok("logs", "web")
    doc = json.loads(hull.ok("inspect", "web"))[0]
    assert doc["State"]["Status"] == "exited" and doc["State"]["ExitCode"] == 0
    assert hull.ok("wait", "web").strip() == "0"
    assert cgroup_dirs_for(cid) == []
    hull.ok("rm", "web")
    assert hull("inspect", "web").returncode != 0


def test_logs_follow_streams_until_exit(hull):
    hull.ok("run", "-d", "--name", "ticker", "busybox", "sh", "-c",
            "for i in 1 2 3 4; do echo tick-$i; sleep 0.3; done")  # fmt: skip
    result = hull("logs", "-f", "ticker", timeout=30)
    assert result.stdout.split() == ["tick-1", "tick-2", "tick-3", "tick-4"]
    stamped = hull.ok("logs", "-t", "--tail", "1", "ticker")
    assert stamped.strip().endswith("tick-4") and "T" in stamped.split()[0]


def test_named_volume_keeps_data(hull):
    hull.ok("run", "--rm", "-v", "data:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    assert hull.ok("run", "--rm", "-v", "data:/data:ro", "busybox", "cat", "/data/f") == "kept\n"
    assert "data" in hull.ok("volume", "ls", "-q").split()
    ro = hull("run", "--rm", "-v", "data:/data:ro", "busybox", "touch", "/data/x")
    assert ro.returncode != 0
    hull.ok("volume", "rm", "data")
    assert "data" not in hull.ok("volume", "ls", "-q").split()


def test_bind_mount_and_tmpfs(hull, tmp_path):
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in").write_text("from host\n")
    out = hull.ok(
        "run", "--rm", "-v", f"{host}:/mnt", "--tmpfs", "/scratch:size=1m", "busybox", "sh", "-c",
        "cat /mnt/in; echo from-ctr > /mnt/out; grep /scratch /proc/mounts | cut -d' ' -f3",
    )  # fmt: skip
    assert out.split() == ["from", "host", "tmpfs"]
    assert (host / "out").read_text() == "from-ctr\n"


def test_restart_always_brings_it_back(hull):
    hull.ok("run", "-d", "--name", "phoenix", "--restart", "always", "busybox",
            "sh", "-c", "sleep 0.2; exit 1")  # fmt: skip
    wait_for(lambda: json.loads(hull.ok("inspect", "phoenix"))[0]["RestartCount"] >= 2)
    hull.ok("stop", "phoenix")
    count = json.loads(hull.ok("inspect", "phoenix"))[0]["RestartCount"]
    time.sleep(0.6)
    doc = json.loads(hull.ok("inspect", "phoenix"))[0]
    assert doc["RestartCount"] == count  # a user's stop is final
    assert doc["State"]["Status"] == "exited"


def test_env_user_workdir_hostname_readonly(hull):
    out = hull.ok(
        "run", "--rm", "-e", "GREETING=hi", "-u", "nobody", "-w", "/tmp", "-h", "box",
        "--read-only", "busybox", "sh", "-c", "echo $GREETING; id -un; pwd; hostname;"
        " touch /x 2>/dev/null || echo ro",
    )  # fmt: skip
    assert out.split() == ["hi", "nobody", "/tmp", "box", "ro"]


def test_security_defaults(hull):
    out = hull.ok("run", "--rm", "busybox", "sh", "-c",
                  "grep CapEff /proc/self/status; grep Seccomp: /proc/self/status")  # fmt: skip
    caps = int(out.split()[1], 16)
    assert caps == 0xA80425FB  # Docker's 14 default capabilities
    assert out.split()[3] == "2"  # a seccomp filter is loaded
    priv = hull.ok(
        "run", "--rm", "--privileged", "busybox", "grep", "Seccomp:", "/proc/self/status"
    )
    assert priv.split()[1] == "0"


def test_name_conflicts_and_prefixes(hull):
    cid = hull.ok("create", "--name", "one", "busybox", "true").strip()
    dup = hull("create", "--name", "one", "busybox", "true")
    assert dup.returncode == 125 and "already in use" in dup.stderr
    assert json.loads(hull.ok("inspect", cid[:6]))[0]["Id"] == cid
    hull.ok("start", "one")
    assert hull.ok("wait", "one").strip() == "0"
    hull.ok("rm", cid[:8])


def test_pause_unpause(hull):
    hull.ok("run", "-d", "--name", "pz", "busybox", "sleep", "30")
    hull.ok("pause", "pz")
    assert "Paused" in hull.ok("ps")
    hull.ok("unpause", "pz")
    assert "Paused" not in hull.ok("ps")
    hull.ok("rm", "-f", "pz")


def test_many_run_rm_leave_no_leftovers(hull):
    """200 `run --rm` in a row and 20 at once, then nothing left behind."""
    import subprocess

    def cgroups() -> set[str]:
        base = f"/sys/fs/cgroup/pids/{os.environ['HULL_CGROUP_PARENT']}"
        return set(os.listdir(base)) if os.path.isdir(base) else set()

    before = cgroups()
    for _ in range(200):
        result = hull("run", "--rm", "busybox", "true")
        assert result.returncode == 0, result.stderr
    procs = [
        subprocess.Popen(hull.cmd("run", "--rm", "busybox", "true"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(20)
    ]  # fmt: skip
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    assert hull.ok("ps", "-aq") == ""
    assert list((Path(hull.paths.root) / "containers").iterdir()) == []
    assert overlay_mounts_under(hull.paths.root) == []
    runtime_state = Path(hull.paths.runtime_state)
    # Only the compiled seccomp filters stay (a cache, no container's state).
    from hull.runtime.linux.seccomp_cache import CACHE_DIR_NAME

    left = [p.name for p in runtime_state.iterdir()] if runtime_state.exists() else []
    assert [name for name in left if name != CACHE_DIR_NAME] == []
    assert {d for d in cgroups() - before if len(d) == 64} == set()


def _hull_python_processes(root: Path) -> list[int]:
    """Every `hull` Python process (CLI, exit commands, logs -f, wait) of this root.

    Not the hull-shims: like conmon or containerd-shim they are the supervisors
    that outlive the engine (their argv names the exit command, hence the comm check).
    """
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            if Path(f"/proc/{name}/comm").read_text().strip() == "hull-shim":
                continue
        except OSError:
            continue
        if b"hull.cli.main" in cmdline and str(root).encode() in cmdline:
            pids.append(int(name))
    return pids


def _log_lines(hull, name: str) -> int:
    return len(hull.ok("logs", name).split())


def test_kill_9_of_every_hull_process_keeps_containers(hull):
    """10 detached containers survive kill -9 of every hull process; then all verbs work."""
    import signal
    import subprocess

    script = "trap 'exit 7' TERM; i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done"
    names = [f"c{i}" for i in range(10)]
    for name in names:
        hull.ok("run", "-d", "--name", name, "busybox", "sh", "-c", script)
    # Long-lived hull processes to kill along with anything else running.
    waiter = subprocess.Popen(hull.cmd("wait", "c0"), stdout=subprocess.DEVNULL)
    follower = subprocess.Popen(hull.cmd("logs", "-f", "c1"), stdout=subprocess.DEVNULL)
    wait_for(lambda: len(_hull_python_processes(hull.paths.root)) >= 2)
    for pid in _hull_python_processes(hull.paths.root):
        os.kill(pid, signal.SIGKILL)
    waiter.wait(timeout=10)
    follower.wait(timeout=10)
    assert _hull_python_processes(hull.paths.root) == []

    before = {name: _log_lines(hull, name) for name in ("c2", "c5", "c9")}
    time.sleep(0.6)
    for name, count in before.items():
        assert _log_lines(hull, name) > count, f"{name}'s log stopped growing"
    ps = hull.ok("ps", "--format", "{{.Names}} {{.State}}").split("\n")
    assert sorted(line for line in ps if line) == sorted(f"{n} running" for n in names)

    hull.ok("stop", "c3")  # trap: exits 7 on SIGTERM
    assert hull.ok("wait", "c3").strip() == "7"
    hull.ok("kill", "c4")
    assert hull.ok("wait", "c4").strip() == "137"
    doc = json.loads(hull.ok("inspect", "c4"))[0]
    assert doc["State"]["ExitCode"] == 137 and doc["State"]["Status"] == "exited"
    hull.ok("rm", "-f", *names)
    assert hull.ok("ps", "-aq") == ""


def test_crash_between_shim_and_start_is_recovered(hull):
    """A `hull start` killed after the shim created the container: the next start works."""
    import signal

    cid = hull.ok("create", "--name", "half", "busybox", "sh", "-c", "echo ran").strip()
    proc = __import__("subprocess").Popen(hull.cmd("start", "half"))
    shim_dir = Path(hull.paths.runroot) / "shims" / cid[:12]
    wait_for(lambda: (shim_dir / "shim.pid").exists(), timeout=20, step=0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    hull.ok("start", "half")
    assert hull.ok("wait", "half").strip() == "0"
    assert "ran" in hull.ok("logs", "half")
    hull.ok("rm", "half")


def test_run_isolation_vm_has_its_own_kernel(hull):
    """The same image and flags, but a microVM: the guest's kernel, exit code, streams."""

    require_vm_tools()
    result = hull(
        "run", "--rm", "--isolation=vm", "-e", "WHO=vm", "busybox", "sh", "-c",
        "uname -r; echo $WHO; echo oops >&2; exit 3", timeout=300,
    )  # fmt: skip
    if result.returncode == 125 and "kernel" in result.stderr:
        pytest.skip(f"no guest kernel for microVMs: {result.stderr.strip()}")
    assert result.returncode == 3, result.stderr
    guest_release, who = result.stdout.split()
    assert guest_release != os.uname().release
    assert who == "vm"
    assert "oops" in result.stderr
    assert hull.ok("ps", "-aq") == ""
    cid = hull.ok("run", "-d", "--isolation=vm", "busybox", "sh", "-c", "exit 4", timeout=300)
    assert hull.ok("wait", cid.strip(), timeout=120).strip() == "4"
    hull.ok("rm", cid.strip())


def test_restart_always_after_the_supervisor_is_killed(hull):
    """No exit command ran (its shim was killed): the next hull invocation's sweep
    records the exit and applies the restart policy."""
    cid = hull.ok(
        "run", "-d", "--name", "lazarus", "--restart", "always", "busybox",
        "sh", "-c", "sleep 0.5; exit 1",
    ).strip()  # fmt: skip
    shim_pid = int((Path(hull.paths.runroot) / "shims" / cid[:12] / "shim.pid").read_text())
    os.kill(shim_pid, 9)
    time.sleep(1.0)  # the container exits with nobody watching

    def restarted() -> bool:
        hull.ok("ps", "-a")  # any sweeping verb: the engine "runs again"
        return json.loads(hull.ok("inspect", "lazarus"))[0]["RestartCount"] >= 1

    wait_for(restarted)
    hull.ok("rm", "-f", "lazarus")
