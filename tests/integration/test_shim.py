"""hull-shim with a real runtime: logs, exit codes, attach, tty, rotation, survival.

The shim is compiled from shim/hull-shim.c once per session (so the tests check the
source in the tree, not a stale build), the way scripts/setup builds it, and found
through $HULL_SHIM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hull.engine.shim import (
    ShimHandle,
    ShimOptions,
    attach,
    exit_error,
    log_files,
    parse_log_time,
    read_exit,
    read_log,
    shim_alive,
    spawn_shim,
)
from hull.errors import HullError
from tests.integration.runtime_helpers import Runtime, container_id, make_bundle

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "shim" / "hull-shim.c"
RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11"]  # as scripts/setup, plus -Werror
# Private pages an idle shim may dirty (Pss_Anon, KiB), by C library: with musl, a
# page of state and the top of its stack (12 KiB); static glibc dirties more as it
# starts (TLS and malloc on a heap, IRELATIVE relocations, the vDSO).
IDLE_ANON_KIB = {"musl": 16, "glibc": 64}


def runtime_command() -> list[str]:
    launcher = Path(sys.executable).parent / "hull-runtime"
    if launcher.exists():
        return [str(launcher)]
    return [sys.executable, "-m", "hull.runtime.cli"]


@dataclass(frozen=True)
class ShimBuild:
    path: str
    libc: str  # "musl" or "glibc"
    static: bool


@pytest.fixture(scope="session")
def shim_build(tmp_path_factory: pytest.TempPathFactory) -> ShimBuild:
    """Built as scripts/setup does: static musl, else static glibc, else dynamic glibc."""
    out = str(tmp_path_factory.mktemp("shim-build") / "hull-shim")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build hull-shim")
    attempts = [(cc, "glibc", True), (cc, "glibc", False)]
    musl = shutil.which("musl-gcc")
    if musl:
        attempts.insert(0, (musl, "musl", True))
    errors = []
    for compiler, libc, static in attempts:
        cmd = [compiler, *CFLAGS, *(["-static"] if static else []), "-o", out, str(SOURCE)]
        built = subprocess.run(cmd, capture_output=True, text=True)
        if built.returncode == 0:
            os.sync()  # written back, the binary's pages count as clean (shared) page cache
            return ShimBuild(out, libc, static)
        errors.append(built.stderr)
    raise AssertionError("cannot build hull-shim:\n" + "\n".join(errors))


def alive_pids(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line contains marker."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline and stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X"):
            found.append(int(name))
    return found


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class ShimLab:
    """Bundles, shims and containers of one test, all removed at teardown."""

    def __init__(self, base: Path, rootfs: Path, build: ShimBuild) -> None:
        self.base = base
        self.rootfs = rootfs
        self.build = build
        self.runtime_root = base / "runtime"
        self.runtime = Runtime(self.runtime_root)
        self.containers: list[str] = []
        self.socket_dirs: list[str] = []

    def options(self, args: list[str], tty: bool = False, **kw) -> ShimOptions:
        bundle, config = make_bundle(self.base, self.rootfs, args)
        if tty:
            config["process"]["terminal"] = True
            (bundle / "config.json").write_text(json.dumps(config))
        cid = container_id()
        # Unix socket paths must stay short: not under pytest's long tmp path.
        socket_dir = f"/tmp/hs-{uuid.uuid4().hex[:10]}"
        self.containers.append(cid)
        self.socket_dirs.append(socket_dir)
        return ShimOptions(
            id=cid,
            bundle=str(bundle),
            runtime=runtime_command(),
            runtime_root=str(self.runtime_root),
            log_path=str(self.base / f"{cid}-json.log"),
            socket_dir=socket_dir,
            tty=tty,
            **kw,
        )

    def start(self, opts: ShimOptions) -> None:
        out = self.runtime.run("start", opts.id)
        assert out.returncode == 0, out.stderr

    def wait_exit(self, opts: ShimOptions) -> int:
        code = wait_for(
            lambda: (c := read_exit(opts.socket_dir)) is not None and (c,), what="the exit file"
        )[0]
        wait_for(lambda: not alive_pids(opts.socket_dir), what="the shim to go")
        return code

    def log_entries(self, opts: ShimOptions) -> list[dict]:
        entries = []
        for path in log_files(opts.log_path):
            with open(path) as f:
                entries += [json.loads(line) for line in f]
        return entries

    def cleanup(self) -> None:
        for cid in self.containers:
            self.runtime.run("delete", "--force", cid)
        for socket_dir in self.socket_dirs:
            for pid in alive_pids(socket_dir):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture
def lab(
    tmp_path: Path, busybox_rootfs: Path, shim_build: ShimBuild, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ShimLab]:
    monkeypatch.setenv("HULL_SHIM", shim_build.path)
    lab = ShimLab(tmp_path, busybox_rootfs, shim_build)
    try:
        yield lab
    finally:
        lab.cleanup()


def fd_targets(pid: int) -> list[str]:
    fd_dir = f"/proc/{pid}/fd"
    return sorted(os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir))


def memory_of(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = (line.split() for line in f if line.startswith(("Rss", "Pss", "Private")))
        return {parts[0].rstrip(":"): int(parts[1]) for parts in fields}


def touched_mappings(pid: int) -> list[str]:
    """Names of pid's mappings with resident pages ("" for anonymous ones)."""
    touched, name = [], ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", parts[0]):
                name = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Rss:" and int(parts[1]) > 0:
                touched.append(name)
    return touched


@pytest.mark.parametrize("code", [0, 3])
def test_logs_both_streams_and_the_exit_code(lab: ShimLab, code: int) -> None:
    opts = lab.options(["sh", "-c", f"echo out; echo err >&2; exit {code}"])
    handle = spawn_shim(opts)
    assert isinstance(handle, ShimHandle)
    assert lab.runtime.state(opts.id)["status"] == "created"
    assert shim_alive(opts.socket_dir)
    assert read_exit(opts.socket_dir) is None
    lab.start(opts)
    assert lab.wait_exit(opts) == code
    entries = lab.log_entries(opts)
    by_stream = {e["stream"]: e["log"] for e in entries}
    assert by_stream == {"stdout": "out\n", "stderr": "err\n"}
    for entry in entries:
        assert set(entry) == {"log", "stream", "time"}
        assert RFC3339_NANO.match(entry["time"]), entry["time"]
        assert abs(parse_log_time(entry["time"]) - time.time()) < 300
    assert not shim_alive(opts.socket_dir)
    assert sorted(os.listdir(opts.socket_dir)) == ["exit", "shim.pid"]
    with open(os.path.join(opts.socket_dir, "exit")) as f:
        assert f.read() == f"{code}\n"


def test_log_escapes_json(lab: ShimLab) -> None:
    # quote, backslash, tab, a control byte, valid UTF-8 (é) and an invalid byte
    opts = lab.options(["printf", 'q"b\\\\ \\t\\001\\303\\251\\377\\n'])
    spawn_shim(opts)
    lab.start(opts)
    assert lab.wait_exit(opts) == 0
    [entry] = lab.log_entries(opts)
    assert entry["log"] == 'q"b\\ \t\x01\u00e9\ufffd\n'


def test_signal_death_gives_128_plus_signal(lab: ShimLab) -> None:
    opts = lab.options(["sleep", "100"])
    handle = spawn_shim(opts)
    lab.start(opts)
    os.kill(handle.container_pid, signal.SIGKILL)
    assert lab.wait_exit(opts) == 137


def test_runtime_failure_is_reported_and_leaves_no_shim(lab: ShimLab) -> None:
    opts = lab.options(["true"])
    config = json.loads((Path(opts.bundle) / "config.json").read_text())
    config["root"]["path"] = "/nonexistent-rootfs-" + uuid.uuid4().hex[:6]
    (Path(opts.bundle) / "config.json").write_text(json.dumps(config))
    with pytest.raises(HullError) as err:
        spawn_shim(opts)
    assert "rootfs" in err.value.message and "does not exist" in err.value.message
    assert "rootfs" in (exit_error(opts.socket_dir) or "")
    assert read_exit(opts.socket_dir) is None
    assert not alive_pids(opts.socket_dir)
    assert not shim_alive(opts.socket_dir)
    assert sorted(os.listdir(opts.socket_dir)) == ["exit", "shim.log"]


def test_idle_shim_holds_only_its_own_fds(lab: ShimLab) -> None:
    leak = os.open("/dev/zero", os.O_RDONLY)
    os.set_inheritable(leak, True)
    try:
        opts = lab.options(["sleep", "100"])
        handle = spawn_shim(opts)
    finally:
        os.close(leak)
    targets = fd_targets(handle.shim_pid)
    kinds = sorted(re.sub(r"\[\d+\]", "", t) for t in targets)
    assert kinds == sorted(
        ["/dev/null"] * 3 + [opts.log_path, "anon_inode:[signalfd]", "socket:", "pipe:", "pipe:"]
    ), targets
    assert os.stat(os.path.join(opts.socket_dir, "attach.sock")).st_mode & 0o777 == 0o600
    lab.start(opts)
    time.sleep(0.2)
    memory = memory_of(handle.shim_pid)
    print(
        f"\nidle hull-shim ({lab.build.libc}): Pss {memory['Pss']} KiB, of which private "
        f"(anon) {memory['Pss_Anon']} KiB; file-backed {memory['Pss_File']} KiB is shared"
    )
    if lab.build.static:
        assert memory["Pss_Anon"] <= IDLE_ANON_KIB[lab.build.libc], memory
    if lab.build.libc == "musl":
        # No heap, and no page of the vDSO: no page tables for those areas either.
        assert not {"[heap]", "[vdso]", "[vvar]"} & set(touched_mappings(handle.shim_pid))
    os.kill(handle.container_pid, signal.SIGKILL)
    assert lab.wait_exit(opts) == 137


def test_buffers_go_back_once_output_stops(lab: ShimLab) -> None:
    if not lab.build.static:
        pytest.skip("a dynamic build dirties more pages than the limit allows")
    limit = IDLE_ANON_KIB[lab.build.libc]
    # a 40000-byte line fills the line buffer (logged in 16 KiB parts), then silence
    script = "head -c 40000 /dev/zero | tr '\\0' a; echo; exec sleep 100"
    opts = lab.options(["sh", "-c", script])
    handle = spawn_shim(opts)
    lab.start(opts)
    wait_for(lambda: len(lab.log_entries(opts)) == 3, what="the long line in the log")
    busy = memory_of(handle.shim_pid)["Pss_Anon"]
    idle = wait_for(
        lambda: (kib := memory_of(handle.shim_pid)["Pss_Anon"]) <= limit and (kib,),
        timeout=30,
        what=f"the idle shim to shrink to {limit} KiB",
    )[0]
    assert busy >= idle + 16  # the line buffer's pages, at least
    os.kill(handle.container_pid, signal.SIGKILL)
    assert lab.wait_exit(opts) == 137


def test_attach_sees_output_frames_in_order(lab: ShimLab) -> None:
    script = "i=1; while [ $i -le 300 ]; do echo line-$i; i=$((i+1)); done; echo bye >&2"
    opts = lab.options(["sh", "-c", script])
    spawn_shim(opts)
    with attach(opts.socket_dir) as client:
        lab.start(opts)
        out, err = b"", b""
        while (frame := client.read_frame()) is not None:
            stream, payload = frame
            if stream == 1:
                out += payload
            else:
                assert stream == 2
                err += payload
    assert out.decode() == "".join(f"line-{i}\n" for i in range(1, 301))
    assert err == b"bye\n"
    assert lab.wait_exit(opts) == 0
    lines = [line for stream, line, _ in read_log(opts.log_path) if stream == "stdout"]
    assert lines == [f"line-{i}\n" for i in range(1, 301)]


def test_attach_stdin_reaches_the_container_and_eof_ends_it(lab: ShimLab) -> None:
    opts = lab.options(["cat"], stdin=True)
    spawn_shim(opts)
    with attach(opts.socket_dir, stdin=True) as client:
        lab.start(opts)
        client.send_stdin(b"hello\n")
        assert client.read_frame() == (1, b"hello\n")
        client.send_stdin(b"x" * 100_000 + b"\n")
        echoed = b""
        while len(echoed) < 100_001:
            frame = client.read_frame()
            assert frame is not None and frame[0] == 1
            echoed += frame[1]
        assert echoed == b"x" * 100_000 + b"\n"
        client.close_stdin()
        assert client.read_frame() is None  # cat saw EOF, exited: the shim closed us
    assert lab.wait_exit(opts) == 0


def test_tty_output_is_stream_1_and_resize_reaches_the_container(lab: ShimLab) -> None:
    opts = lab.options(["sh", "-c", "read x; stty size; echo to-stderr >&2"], tty=True, stdin=True)
    spawn_shim(opts)
    with attach(opts.socket_dir, stdin=True, tty=True) as client:
        lab.start(opts)
        client.resize(33, 111)
        client.send_stdin(b"go\n")
        frames = []
        while (frame := client.read_frame()) is not None:
            frames.append(frame)
    assert {stream for stream, _ in frames} == {1}
    output = b"".join(payload for _, payload in frames)
    assert b"33 111\r\n" in output
    assert b"to-stderr" in output
    assert lab.wait_exit(opts) == 0
    entries = lab.log_entries(opts)
    assert {e["stream"] for e in entries} == {"stdout"}
    assert any(e["log"] == "33 111\r\n" for e in entries)


def test_rotation_keeps_max_files_newest_in_the_base_file(lab: ShimLab) -> None:
    script = "i=1; while [ $i -le 60 ]; do echo line-$i; i=$((i+1)); done"
    opts = lab.options(["sh", "-c", script], log_max_size=300, log_max_files=3)
    spawn_shim(opts)
    lab.start(opts)
    assert lab.wait_exit(opts) == 0
    files = log_files(opts.log_path)
    assert files == [f"{opts.log_path}.2", f"{opts.log_path}.1", opts.log_path]
    assert not os.path.exists(f"{opts.log_path}.3")
    for path in files:
        assert 0 < os.path.getsize(path) <= 300
    with open(opts.log_path) as f:
        assert json.loads(f.readlines()[-1])["log"] == "line-60\n"
    numbers = [int(line.split("-")[1]) for _, line, _ in read_log(opts.log_path)]
    assert numbers == list(range(numbers[0], 61)) and numbers[0] > 1
    tail = [line for _, line, _ in read_log(opts.log_path, tail=5)]
    assert tail == [f"line-{i}\n" for i in range(56, 61)]


def test_one_log_file_is_truncated_instead_of_rotated(lab: ShimLab) -> None:
    script = "i=1; while [ $i -le 40 ]; do echo line-$i; i=$((i+1)); done"
    opts = lab.options(["sh", "-c", script], log_max_size=200, log_max_files=1)
    spawn_shim(opts)
    lab.start(opts)
    assert lab.wait_exit(opts) == 0
    assert log_files(opts.log_path) == [opts.log_path]
    assert not os.path.exists(f"{opts.log_path}.1")
    assert 0 < os.path.getsize(opts.log_path) <= 200
    assert [line for _, line, _ in read_log(opts.log_path)][-1] == "line-40\n"


def test_follow_reads_across_rotations_until_the_shim_is_gone(lab: ShimLab) -> None:
    script = "i=1; while [ $i -le 30 ]; do echo line-$i; i=$((i+1)); sleep 0.02; done"
    opts = lab.options(["sh", "-c", script], log_max_size=400, log_max_files=20)
    spawn_shim(opts)
    lab.start(opts)
    lines = [
        line for _, line, _ in read_log(opts.log_path, follow=True, socket_dir=opts.socket_dir)
    ]
    assert lines == [f"line-{i}\n" for i in range(1, 31)]
    assert len(log_files(opts.log_path)) > 2
    assert read_exit(opts.socket_dir) == 0


def test_exit_command_runs_after_the_exit(lab: ShimLab) -> None:
    marker = lab.base / "exit-command-ran"
    opts = lab.options(
        ["sh", "-c", "exit 7"], exit_command=["/bin/sh", "-c", f"echo done > {marker}"]
    )
    spawn_shim(opts)
    lab.start(opts)
    assert lab.wait_exit(opts) == 7
    wait_for(lambda: marker.exists() and marker.read_text() == "done\n", what="the exit command")


HELPER = """
import sys, time
from hull.engine.shim import ShimOptions, spawn_shim
import json
args = json.loads(sys.argv[1])
handle = spawn_shim(ShimOptions(**args))
print(handle.shim_pid, handle.container_pid, flush=True)
time.sleep(600)
"""


def test_shim_survives_its_caller_being_killed(lab: ShimLab) -> None:
    script = "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.05; done"
    opts = lab.options(["sh", "-c", script])
    args = {k: getattr(opts, k) for k in ("id", "bundle", "runtime", "runtime_root", "log_path")}
    args["socket_dir"] = opts.socket_dir
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER, json.dumps(args)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert helper.stdout is not None
        shim_pid, container_pid = map(int, helper.stdout.readline().split())
        lab.start(opts)
        helper.kill()
        helper.wait()
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
            os.kill(shim_pid, sig)
        assert shim_alive(opts.socket_dir)
        count = len(lab.log_entries(opts))
        wait_for(lambda: len(lab.log_entries(opts)) > count + 3, what="more log lines")
        os.kill(container_pid, signal.SIGKILL)
        assert lab.wait_exit(opts) == 137
        assert not shim_alive(opts.socket_dir) and shim_pid > 0
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()


def test_partial_and_long_lines_are_logged_like_docker(lab: ShimLab) -> None:
    # a 40000-byte line is logged in 16 KiB parts; output without a newline at the end
    # is flushed as its own entry when the stream closes
    script = "head -c 40000 /dev/zero | tr '\\0' a; echo; printf tail"
    opts = lab.options(["sh", "-c", script])
    spawn_shim(opts)
    lab.start(opts)
    assert lab.wait_exit(opts) == 0
    logs = [e["log"] for e in lab.log_entries(opts)]
    assert logs == ["a" * 16384, "a" * 16384, "a" * (40000 - 32768) + "\n", "tail"]


def test_a_client_that_does_not_read_is_dropped_not_waited_for(lab: ShimLab) -> None:
    # many small writes (a frame each), then more than a client's backlog may hold
    script = (
        "i=0; while [ $i -lt 5000 ]; do echo line-$i; i=$((i+1)); done;"
        "head -c 6000000 /dev/zero | tr '\\0' b; echo"
    )
    opts = lab.options(["sh", "-c", script])
    spawn_shim(opts)
    with attach(opts.socket_dir) as stuck:
        lab.start(opts)
        assert lab.wait_exit(opts) == 0
        # the stuck client got a prefix, then the shim hung up on it
        prefix = bytearray()
        while (frame := stuck.read_frame()) is not None:
            prefix += frame[1]
    expected = "".join(f"line-{i}\n" for i in range(5000)).encode() + b"b" * 6_000_000 + b"\n"
    assert expected.startswith(prefix) and len(prefix) < len(expected)
    logged = "".join(line for _, line, _ in read_log(opts.log_path))
    assert logged.encode() == expected
