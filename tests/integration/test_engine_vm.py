"""VM containers through the real `hull` CLI: detached, exec, stop/kill/rm, volumes, crashes.

A VM container is supervised by hull-shim running the VM supervisor (hull.vm.supervisor)
in the place of an OCI runtime. The VMs run under TCG here: warm restores take about
0.3 s, cold boots (volumes, through virtiofs) about 2 s, the template is built once for
the module. One Hull root serves the module (one image, one guest-asset cache); every
test names its own containers and removes them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hull.paths import HullPaths
from tests.integration.engine_helpers import (
    Hull,
    overlay_mounts_under,
    require_vm_tools,
    shim_pids,
    wait_for,
)

VM = "--isolation=vm"


@pytest.fixture(scope="module")
def hull(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hull]:
    require_vm_tools()
    base = tmp_path_factory.mktemp("hull-vm-engine")
    paths = HullPaths(base / "lib", base / "run")
    Path(paths.root).mkdir()
    Path(paths.runroot).mkdir()
    h = Hull(paths)
    h.ok("image", "bootstrap", "busybox")
    probe = h("run", "--rm", VM, "busybox", "true", timeout=300)
    if probe.returncode == 125 and "kernel" in probe.stderr:
        pytest.skip(f"no guest kernel for microVMs: {probe.stderr.strip()}")
    assert probe.returncode == 0, probe.stderr
    yield h
    ids = h("ps", "-aq", "--no-trunc").stdout.split()
    if ids:
        h("rm", "-f", *ids)
    leftover = shim_pids(paths.runroot)
    for pid in leftover + vm_processes(paths.runroot):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert leftover == []
    assert vm_processes(paths.runroot) == []
    assert overlay_mounts_under(paths.root) == []


def vm_processes(runroot: Path) -> list[int]:
    """Live QEMU, virtiofsd and VM supervisors of this Hull root."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] == "Z":
            continue
        ours = str(runroot).encode() in cmdline
        if comm == "hull-vm":
            ours = (Path(f"/proc/{entry}/cwd").resolve() == Path("/")) and _supervises_here(
                int(entry), runroot
            )
        if ours and (b"qemu-system" in cmdline or b"virtiofsd" in cmdline or comm == "hull-vm"):
            found.append(int(entry))
    return found


def _supervises_here(pid: int, runroot: Path) -> bool:
    """A supervisor's parent is one of this root's shims."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return ppid in shim_pids(runroot)


def shim_dir(h: Hull, cid: str) -> Path:
    return Path(h.paths.runroot) / "shims" / cid[:12]


def qemu_of(h: Hull, cid: str) -> list[int]:
    """QEMU processes running this container's VM."""
    marker = str(shim_dir(h, cid)).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmdline and marker in cmdline:
                pids.append(int(entry))
    return pids


def state(h: Hull, ref: str) -> dict:
    return json.loads(h.ok("inspect", ref))[0]["State"]


def assert_gone(h: Hull, cid: str) -> None:
    """No QEMU, no run dir, no control socket left for the container."""
    wait_for(lambda: qemu_of(h, cid) == [], timeout=10)
    assert not (shim_dir(h, cid) / "vm").exists()
    assert not (shim_dir(h, cid) / "vm.sock").exists()


def test_detached_vm_outlives_hull_logs_and_records_its_exit(hull: Hull) -> None:
    cid = hull.ok(
        "run", "-d", VM, "--name", "vm-detached", "busybox", "sh", "-c",
        "echo hello; echo oops >&2; uname -r; sleep 1.5; echo done; exit 3",
    ).strip()  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    assert len(qemu_of(hull, cid)) == 1  # no `hull` process is left: the VM runs on
    ps = hull.ok("ps")
    assert "vm-detached" in ps and "Up" in ps
    follow = hull("logs", "-f", "vm-detached", timeout=60)
    assert follow.stdout.split("\n")[0] == "hello"
    assert follow.stdout.split()[1] != os.uname().release  # the guest's own kernel
    assert follow.stdout.split()[-1] == "done" and follow.stderr == "oops\n"
    assert hull.ok("wait", "vm-detached").strip() == "3"
    doc = json.loads(hull.ok("inspect", "vm-detached"))[0]
    assert doc["State"]["Status"] == "exited" and doc["State"]["ExitCode"] == 3
    assert doc["HostConfig"]["Isolation"] == "vm"
    log = Path(doc["LogPath"]).read_text().splitlines()
    assert {json.loads(line)["stream"] for line in log} == {"stdout", "stderr"}
    assert_gone(hull, cid)
    assert "vm-detached" not in hull.ok("ps")
    hull.ok("rm", "vm-detached")
    assert not shim_dir(hull, cid).exists()


def test_exec_runs_beside_the_main_process(hull: Hull) -> None:
    hull.ok("run", "-d", VM, "--name", "vm-exec", "-e", "FROM_RUN=1", "busybox",
            "sleep", "100")  # fmt: skip
    assert hull.ok("exec", "vm-exec", "sh", "-c", "echo $((6*7))") == "42\n"
    failed = hull("exec", "vm-exec", "sh", "-c", "echo to-err >&2; exit 5")
    assert (failed.returncode, failed.stderr) == (5, "to-err\n")
    out = hull.ok(
        "exec", "-e", "EXTRA=x", "-w", "/etc", "-u", "nobody", "vm-exec",
        "sh", "-c", 'echo "$FROM_RUN $EXTRA $(pwd) $(id -u)"',
    )  # fmt: skip
    assert out == "1 x /etc 65534\n"
    assert hull("exec", "vm-exec", "/no/such/program").returncode == 127
    counted = subprocess.run(hull.cmd("exec", "-i", "vm-exec", "wc", "-c"), input="twelve bytes",
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert counted.stdout.strip() == "12"
    # Two at once: the slow one's output arrives after the quick one finished.
    slow = subprocess.Popen(
        hull.cmd("exec", "vm-exec", "sh", "-c", "sleep 1; echo slow"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert hull.ok("exec", "vm-exec", "echo", "quick") == "quick\n"
    assert slow.communicate(timeout=60) == ("slow\n", "")
    # A process that exec left behind in the background does not stop the next exec.
    hull.ok("exec", "-d", "vm-exec", "sleep", "50")
    assert "sleep 50" in hull.ok("exec", "vm-exec", "ps")
    hull.ok("rm", "-f", "vm-exec")
    assert hull("exec", "vm-exec", "true").returncode != 0


def test_stop_kill_and_rm_leave_nothing(hull: Hull) -> None:
    polite = hull.ok(
        "run", "-d", VM, "--name", "vm-polite", "busybox", "sh", "-c",
        "trap 'echo got-usr1' USR1; trap 'echo bye; exit 0' TERM; echo up;"
        " while :; do sleep 0.1; done",
    ).strip()  # fmt: skip
    wait_for(lambda: "up" in hull.ok("logs", "vm-polite"))
    hull.ok("kill", "-s", "USR1", "vm-polite")
    wait_for(lambda: "got-usr1" in hull.ok("logs", "vm-polite"))
    assert state(hull, "vm-polite")["Running"] is True
    hull.ok("stop", "vm-polite")
    assert hull.ok("logs", "vm-polite").split()[-1] == "bye"
    assert state(hull, "vm-polite")["ExitCode"] == 0
    assert_gone(hull, polite)

    # Ignores TERM: stop waits -t seconds, then SIGKILL powers the VM off.
    stubborn = hull.ok("run", "-d", VM, "--name", "vm-stubborn", "busybox", "sh", "-c",
                       "trap '' TERM; echo up; sleep 100 & wait")  # fmt: skip
    wait_for(lambda: "up" in hull.ok("logs", "vm-stubborn"))
    hull.ok("stop", "-t", "1", "vm-stubborn")
    assert state(hull, "vm-stubborn")["ExitCode"] == 137
    assert_gone(hull, stubborn)

    killed = hull.ok("run", "-d", VM, "--name", "vm-killed", "busybox", "sleep", "100").strip()
    hull.ok("kill", "vm-killed")
    assert hull.ok("wait", "vm-killed").strip() == "137"
    assert_gone(hull, killed)

    running = hull.ok("run", "-d", VM, "--name", "vm-rm", "busybox", "sleep", "100").strip()
    assert hull("rm", "vm-rm").returncode != 0  # running: needs -f
    hull.ok("rm", "-f", "vm-rm", "vm-polite", "vm-stubborn", "vm-killed")
    for cid in (polite, stubborn, killed, running):
        assert qemu_of(hull, cid) == []
        assert not shim_dir(hull, cid).exists()
        assert not (Path(hull.paths.containers) / cid).exists()
    assert list((Path(hull.paths.runroot) / "vm").glob("*")) == []  # no per-run disk or socket


def test_pause_and_unpause_freeze_the_guest(hull: Hull) -> None:
    hull.ok("run", "-d", VM, "--name", "vm-pause", "busybox", "sh", "-c",
            "while :; do echo tick; sleep 0.1; done")  # fmt: skip
    wait_for(lambda: "tick" in hull.ok("logs", "vm-pause"))
    hull.ok("pause", "vm-pause")
    assert state(hull, "vm-pause")["Status"] == "paused"
    time.sleep(0.3)  # let output in flight land
    frozen = hull.ok("logs", "vm-pause").count("tick")
    time.sleep(0.6)
    assert hull.ok("logs", "vm-pause").count("tick") == frozen
    hull.ok("unpause", "vm-pause")
    wait_for(lambda: hull.ok("logs", "vm-pause").count("tick") > frozen)
    hull.ok("rm", "-f", "vm-pause")


def test_volumes_are_shared_with_the_host(hull: Hull, tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in").write_text("from host\n")
    name = f"vmdata{os.getpid()}"
    out = hull.ok(
        "run", "--rm", VM, "-v", f"{host}:/mnt/host", "-v", f"{name}:/data", "busybox",
        "sh", "-c", "cat /mnt/host/in; echo from-vm > /mnt/host/out; echo kept > /data/f",
    )  # fmt: skip
    assert out == "from host\n"
    assert (host / "out").read_text() == "from-vm\n"
    cid = hull.ok("run", "-d", VM, "--name", "vm-vol", "-v", f"{name}:/data:ro", "busybox",
                  "sleep", "100").strip()  # fmt: skip
    assert hull.ok("exec", "vm-vol", "cat", "/data/f") == "kept\n"
    assert hull("exec", "vm-vol", "touch", "/data/x").returncode != 0  # read-only
    daemons = [p for p in vm_processes(hull.paths.runroot) if b"virtiofsd" in _cmdline(p)]
    assert len(daemons) == 1
    hull.ok("rm", "-f", "vm-vol")
    assert_gone(hull, cid)
    wait_for(lambda: all(not Path(f"/proc/{p}").exists() for p in daemons), timeout=10)
    hull.ok("volume", "rm", name)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_killed_hull_processes_leave_the_vm_running_and_adopted(hull: Hull) -> None:
    cid = hull.ok("run", "-d", VM, "--name", "vm-adopt", "busybox", "sh", "-c",
                  "echo up; trap 'echo bye; exit 0' TERM; while :; do sleep 0.1; done",
                  ).strip()  # fmt: skip
    watchers = [
        subprocess.Popen(hull.cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for args in (("logs", "-f", "vm-adopt"), ("wait", "vm-adopt"), ("attach", "vm-adopt"))
    ]
    time.sleep(1.0)  # they are attached and waiting
    for proc in watchers:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert len(qemu_of(hull, cid)) == 1
    assert "vm-adopt" in hull.ok("ps")
    assert hull.ok("exec", "vm-adopt", "echo", "still here") == "still here\n"
    hull.ok("stop", "vm-adopt")
    assert hull.ok("logs", "vm-adopt").split() == ["up", "bye"]
    assert state(hull, "vm-adopt")["ExitCode"] == 0
    assert_gone(hull, cid)
    hull.ok("rm", "vm-adopt")


def test_killed_supervisor_ends_in_a_recorded_exit_and_no_vm(hull: Hull) -> None:
    # The supervisor alone: its shim records the exit and runs the cleanup.
    cid = hull.ok("run", "-d", VM, "--name", "vm-sup", "busybox", "sleep", "100").strip()
    supervisor = int((shim_dir(hull, cid) / "container.pid").read_text())
    assert Path(f"/proc/{supervisor}/comm").read_text().strip() == "hull-vm"
    os.kill(supervisor, signal.SIGKILL)
    assert hull.ok("wait", "vm-sup").strip() == "137"
    assert_gone(hull, cid)

    # Supervisor and shim together: nobody records the exit but the next sweep.
    cid2 = hull.ok("run", "-d", VM, "--name", "vm-orphan", "busybox", "sleep", "100").strip()
    shim = int((shim_dir(hull, cid2) / "shim.pid").read_text())
    supervisor = int((shim_dir(hull, cid2) / "container.pid").read_text())
    os.kill(shim, signal.SIGKILL)
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{supervisor}/comm").exists(), timeout=10)
    hull.ok("ps")  # any verb sweeps
    after = state(hull, "vm-orphan")
    assert after["Status"] == "exited" and after["ExitCode"] == 255
    assert "supervisor" in after["Error"]
    assert_gone(hull, cid2)
    hull.ok("rm", "vm-sup", "vm-orphan")


SIZES = "tty; stty size; while read line; do stty size; done"


def on_terminal(h: Hull, *args: str, rows: int) -> tuple[bytes, int]:
    """Run `hull ARGS` (ending in `sh -c SIZES...`) on a new 24x80 pty; once the guest
    printed the size, resize the window to rows x 101 and press return until the guest
    prints the new size, then type ^D. (output, exit code)"""
    import fcntl
    import pty
    import select
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        # The real window size, not one that LINES/COLUMNS (set by pytest) pin.
        env = {k: v for k, v in os.environ.items() if k not in ("LINES", "COLUMNS")}
        os.execve(h.cmd()[0], h.cmd(*args), env)
    out = b""
    resized = done = False
    asked = 0.0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if not resized and b"24 80" in out:
                fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, 101, 0, 0))
                resized = True
            elif resized and not done and f"{rows} 101".encode() in out:
                os.write(fd, b"\x04")  # ^D: the end of input
                done = True
            elif resized and not done and time.monotonic() - asked > 0.5:
                os.write(fd, b"\r")  # the resize travels: hull, shim, supervisor, guest
                asked = time.monotonic()
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed its terminal
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return out, os.waitstatus_to_exitcode(status)


def test_run_and_exec_with_a_terminal(hull: Hull) -> None:
    out, code = on_terminal(hull, "run", "--rm", "-it", VM, "busybox", "sh", "-c",
                            f"{SIZES}; exit 7", rows=33)  # fmt: skip
    assert code == 7, out
    assert b"/dev/pts/0\r\n24 80\r\n" in out and b"33 101\r\n" in out, out
    echo = subprocess.run(hull.cmd("run", "--rm", "-i", VM, "busybox", "sh", "-c", "cat; echo end"),
                          input=b"piped\n", capture_output=True, timeout=60)  # fmt: skip
    assert (echo.returncode, echo.stdout) == (0, b"piped\nend\n")
    hull.ok("run", "-d", VM, "--name", "vm-tty", "busybox", "sleep", "100")
    out, code = on_terminal(hull, "exec", "-it", "vm-tty", "sh", "-c", f"{SIZES}; exit 3",
                            rows=40)  # fmt: skip
    assert code == 3, out
    assert b"/dev/pts/0\r\n24 80\r\n" in out and b"40 101\r\n" in out, out
    hull.ok("rm", "-f", "vm-tty")


def test_restart_policy_boots_a_new_vm(hull: Hull) -> None:
    hull.ok("run", "-d", VM, "--name", "vm-restart", "--restart", "on-failure:1", "busybox",
            "sh", "-c", "echo run; exit 1")  # fmt: skip

    def restarted_and_done() -> bool:
        doc = json.loads(hull.ok("inspect", "vm-restart"))[0]
        ran_twice = hull.ok("logs", "vm-restart").split() == ["run", "run"]
        return ran_twice and doc["RestartCount"] == 1 and doc["State"]["Status"] == "exited"

    wait_for(restarted_and_done, timeout=60)
    assert state(hull, "vm-restart")["ExitCode"] == 1
    hull.ok("rm", "vm-restart")


def test_stats_report_the_guests_memory_and_processes(hull: Hull) -> None:
    hull.ok("run", "-d", VM, "-m", "160m", "--name", "vm-stats", "busybox", "sh", "-c",
            "sleep 301 & exec sleep 300")  # fmt: skip
    wait_for(lambda: "sleep 301" in hull.ok("exec", "vm-stats", "ps"))
    row = json.loads(hull.ok("stats", "--no-stream", "--format", "json", "vm-stats"))
    assert row["Name"] == "vm-stats" and row["PIDs"] == "2"  # the agent is not counted
    used, limit = row["MemUsage"].split(" / ")
    assert limit.endswith("MiB") and 120 < float(limit[:-3]) <= 160  # the guest's RAM
    assert used.endswith("MiB") and 0 < float(used[:-3]) < float(limit[:-3])
    assert 0 < float(row["MemPerc"].rstrip("%")) < 100
    assert float(row["CPUPerc"].rstrip("%")) >= 0.0  # QEMU's share of the host's CPU time
    assert row["BlockIO"].split(" / ")[0] != "0B"  # the root disk was read
    hull.ok("pause", "vm-stats")  # a paused guest cannot answer: its last figures stand
    paused = json.loads(hull.ok("stats", "--no-stream", "--format", "json", "vm-stats"))
    assert paused["PIDs"] == "2" and paused["MemUsage"].endswith(limit)
    hull.ok("rm", "-f", "vm-stats")
    listed = hull.ok("stats", "--no-stream", "--all", "--format", "json").splitlines()
    assert "vm-stats" not in [json.loads(line)["Name"] for line in listed]


def test_top_lists_the_guests_processes(hull: Hull) -> None:
    hull.ok("run", "-d", VM, "--name", "vm-top", "busybox", "sh", "-c",
            "sleep 302 & exec sleep 303")  # fmt: skip
    wait_for(lambda: "sleep 302" in hull.ok("exec", "vm-top", "ps"))
    lines = hull.ok("top", "vm-top").splitlines()
    assert lines[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    rows = {line.split(None, 7)[7]: line.split() for line in lines[1:]}
    assert set(rows) == {"sleep 302", "sleep 303"}  # no agent, no kernel thread
    assert rows["sleep 302"][2] == rows["sleep 303"][1]  # sleep 302's parent became 303
    assert rows["sleep 303"][0] == "root" and rows["sleep 303"][5] == "?"
    refused = hull("top", "vm-top", "aux")
    assert refused.returncode != 0 and "ps -ef" in refused.stderr
    hull.ok("rm", "-f", "vm-top")
    assert hull("top", "vm-top").returncode != 0
