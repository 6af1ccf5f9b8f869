"""hull-runtime against the real kernel, on a busybox rootfs (root only)."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.runtime_helpers import (
    Runtime,
    cgroup_dirs,
    container_id,
    make_bundle,
    write_config,
)


@pytest.fixture
def rt(tmp_path: Path):
    runtime = Runtime(tmp_path / "state")
    yield runtime
    # Whatever a test left running is force-deleted, so nothing leaks between tests.
    if runtime.root.exists():
        for cid in os.listdir(runtime.root):
            runtime.run("delete", "--force", cid)


def run_in(rt: Runtime, tmp_path: Path, rootfs: Path, script: str, **changes):
    bundle, config = make_bundle(tmp_path, rootfs, ["sh", "-c", script], **changes)
    cid = container_id()
    result = rt.run("run", "--bundle", str(bundle), cid)
    return result, config


def config_with(tmp_path: Path, rootfs: Path, script: str, edit) -> tuple[Path, dict]:
    bundle, config = make_bundle(tmp_path, rootfs, ["sh", "-c", script])
    edit(config)
    write_config(bundle, config)
    return bundle, config


def test_pid1_and_host_pids_invisible(rt, tmp_path, busybox_rootfs):
    out, _ = run_in(rt, tmp_path, busybox_rootfs, "echo $$; ls /proc | grep -c '^[0-9]'")
    assert out.returncode == 0, out.stderr
    pid_line, count_line = out.stdout.split()
    assert pid_line == "1"
    # sh, ls, grep at most: none of the host's hundreds of processes.
    assert int(count_line) <= 4


def test_hostname_mounts_and_empty_network(rt, tmp_path, busybox_rootfs):
    script = "hostname; cat /proc/self/mountinfo; echo ---; ls /sys/class/net"
    out, config = run_in(rt, tmp_path, busybox_rootfs, script)
    assert out.returncode == 0, out.stderr
    hostname, rest = out.stdout.split("\n", 1)
    mounts, nets = rest.split("---\n")
    assert hostname == config["hostname"] == "hull"
    mount_points = [line.split()[4] for line in mounts.splitlines()]
    assert mount_points[0] == "/"
    assert "/proc" in mount_points and "/dev/pts" in mount_points
    assert not any(p.startswith("/work") or p.startswith("/tmp/pytest") for p in mount_points)
    assert nets.split() == ["lo"]


def test_exit_code_and_exec_errors(rt, tmp_path, busybox_rootfs):
    out, _ = run_in(rt, tmp_path, busybox_rootfs, "exit 3")
    assert out.returncode == 3
    bundle, _ = make_bundle(tmp_path, busybox_rootfs, ["/no/such/binary"])
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.returncode == 127
    assert "/no/such/binary" in out.stderr
    bundle, _ = make_bundle(tmp_path, busybox_rootfs, ["/etc/passwd"])
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.returncode == 126


def test_memory_limit_oom_kills(rt, tmp_path, busybox_rootfs):
    def edit(config):
        config["linux"]["resources"]["memory"] = {"limit": 16 << 20, "swap": 16 << 20}

    bundle, config = make_bundle(
        tmp_path, busybox_rootfs, ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
    )
    edit(config)
    write_config(bundle, config)
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.returncode == 137, (out.returncode, out.stdout, out.stderr)


def test_pids_limit_makes_fork_fail(rt, tmp_path, busybox_rootfs):
    def edit(config):
        config["linux"]["resources"]["pids"] = {"limit": 4}

    script = "cat /sys/fs/cgroup/pids/pids.max; for i in 1 2 3 4 5 6 7 8; do sleep 1 & done"
    bundle, _ = config_with(tmp_path, busybox_rootfs, script, edit)
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.stdout.split() == ["4"]
    assert out.returncode != 0
    assert "can't fork" in out.stderr, out


def test_capabilities_match_spec(rt, tmp_path, busybox_rootfs):
    out, config = run_in(rt, tmp_path, busybox_rootfs, "grep ^Cap /proc/self/status")
    assert out.returncode == 0, out.stderr
    caps = dict(line.split(":\t") for line in out.stdout.splitlines())
    # CAP_KILL (5), CAP_NET_BIND_SERVICE (10), CAP_AUDIT_WRITE (29)
    expected = f"{(1 << 5) | (1 << 10) | (1 << 29):016x}"
    assert caps["CapBnd"] == caps["CapEff"] == caps["CapPrm"] == expected
    assert caps["CapInh"] == "0000000000000000"


def test_no_signal_is_ignored_or_blocked(rt, tmp_path, busybox_rootfs):
    """Python ignores SIGPIPE and SIGXFSZ; an ignored signal survives execve, so a
    container would inherit them (`yes | head` would not end) unless undone."""
    bundle, _ = make_bundle(tmp_path, busybox_rootfs, ["grep", "^Sig[IB]", "/proc/self/status"])
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.returncode == 0, out.stderr
    masks = dict(line.split(":\t") for line in out.stdout.splitlines())
    assert masks == {"SigBlk": "0000000000000000", "SigIgn": "0000000000000000"}


def test_seccomp_rule_returns_errno(rt, tmp_path, busybox_rootfs):
    def edit(config):
        config["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ],
        }

    bundle, _ = config_with(
        tmp_path, busybox_rootfs, "mkdir /tmp/x; echo rc=$?; touch /tmp/y", edit
    )
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.returncode == 0, out.stderr
    assert "Function not implemented" in out.stderr
    assert "rc=1" in out.stdout


def test_readonly_masked_paths_and_readonly_root(rt, tmp_path, busybox_rootfs):
    def edit(config):
        config["root"]["readonly"] = True

    script = (
        "echo x > /proc/sys/kernel/domainname 2>/dev/null; echo sys=$?;"
        "cat /proc/keys | wc -c; ls /sys/firmware | wc -l;"
        "touch /newfile 2>/dev/null; echo root=$?; touch /dev/shm/ok; echo shm=$?"
    )
    bundle, _ = config_with(tmp_path, busybox_rootfs, script, edit)
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines == ["sys=1", "0", "0", "root=1", "shm=0"]
    assert not (busybox_rootfs / "newfile").exists()


def test_every_hook_kind_gets_state_on_stdin(rt, tmp_path, busybox_rootfs):
    record = tmp_path / "hooks"
    record.mkdir()
    hooks = {}
    for kind in ("prestart", "createRuntime", "createContainer", "poststart", "poststop"):
        hooks[kind] = [
            {"path": "/bin/sh", "args": ["sh", "-c", f"cat > {record}/{kind}"], "timeout": 10}
        ]
    # startContainer runs inside the container: it writes into the container's /tmp.
    hooks["startContainer"] = [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/started"]}]
    bundle, config = make_bundle(tmp_path, busybox_rootfs, ["cat", "/tmp/started"], hooks=hooks)
    cid = container_id()
    out = rt.run("run", "--bundle", str(bundle), cid)
    assert out.returncode == 0, out.stderr
    started = json.loads(out.stdout)
    assert started["id"] == cid
    for kind in ("prestart", "createRuntime", "createContainer", "poststart", "poststop"):
        state = json.loads((record / kind).read_text())
        assert state["id"] == cid, kind
        assert state["bundle"] == str(bundle), kind
        assert state["pid"] > 0, kind
    assert json.loads((record / "poststop").read_text())["status"] == "stopped"


def test_failing_hook_aborts_create_without_leftovers(rt, tmp_path, busybox_rootfs):
    hooks = {"createRuntime": [{"path": "/bin/false"}]}
    bundle, config = make_bundle(tmp_path, busybox_rootfs, ["true"], hooks=hooks)
    cid = container_id()
    out = rt.run("create", "--bundle", str(bundle), cid)
    assert out.returncode != 0
    assert "createRuntime hook /bin/false" in out.stderr
    assert not (rt.root / cid).exists()
    assert cgroup_dirs(config["linux"]["cgroupsPath"]) == []


def test_create_start_state_kill_delete(rt, tmp_path, busybox_rootfs):
    bundle, config = make_bundle(tmp_path, busybox_rootfs, ["sleep", "60"])
    cid = container_id()
    pid_file = tmp_path / "pid"
    out = rt.run_detached("create", "--bundle", str(bundle), "--pid-file", str(pid_file), cid)
    assert out.returncode == 0, out.stderr
    state = rt.state(cid)
    assert state["status"] == "created"
    assert state["pid"] == int(pid_file.read_text())
    assert state["bundle"] == str(bundle)
    assert "sleep" not in Path(f"/proc/{state['pid']}/cmdline").read_text()
    assert rt.run_detached("start", cid).returncode == 0
    state = rt.state(cid)
    assert state["status"] == "running"
    assert Path(f"/proc/{state['pid']}/cmdline").read_bytes().startswith(b"sleep")
    assert rt.run("start", cid).returncode != 0  # start twice is an error
    out = rt.run("delete", cid)
    assert out.returncode != 0 and "running" in out.stderr
    listed = rt.run("list", "--format", "json")
    assert [c["id"] for c in json.loads(listed.stdout)] == [cid]
    assert rt.run("kill", cid, "KILL").returncode == 0
    for _ in range(200):
        if rt.state(cid)["status"] == "stopped":
            break
        time.sleep(0.01)
    assert rt.state(cid)["status"] == "stopped"
    out = rt.run("kill", cid, "TERM")
    assert out.returncode != 0 and "stopped" in out.stderr
    assert rt.run("delete", cid).returncode == 0
    assert rt.run("state", cid).returncode != 0
    assert cgroup_dirs(config["linux"]["cgroupsPath"]) == []


def test_delete_force_and_kill_all(rt, tmp_path, busybox_rootfs):
    bundle, config = make_bundle(tmp_path, busybox_rootfs, ["sh", "-c", "sleep 60 & sleep 60"])
    cid = container_id()
    assert rt.run_detached("run", "--detach", "--bundle", str(bundle), cid).returncode == 0
    out = rt.run("ps", "--format", "json", cid)
    pids = json.loads(out.stdout)
    assert len(pids) >= 2
    assert rt.run("delete", "--force", cid).returncode == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert cgroup_dirs(config["linux"]["cgroupsPath"]) == []
    assert not (rt.root / cid).exists()


def test_exec_joins_every_namespace(rt, tmp_path, busybox_rootfs):
    bundle, config = make_bundle(tmp_path, busybox_rootfs, ["sleep", "60"])
    cid = container_id()
    assert rt.run_detached("run", "--detach", "--bundle", str(bundle), cid).returncode == 0
    pid = rt.state(cid)["pid"]
    kinds = ["pid", "net", "ipc", "uts", "mnt", "cgroup"]
    script = "; ".join(f"readlink /proc/self/ns/{k}" for k in kinds) + "; echo $$; hostname"
    out = rt.run("exec", cid, "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    expected = [os.readlink(f"/proc/{pid}/ns/{k}") for k in kinds]
    assert lines[: len(kinds)] == expected
    assert lines[-2] != "1"  # a new process in the container's pid namespace
    assert lines[-1] == "hull"
    out = rt.run("exec", "--env", "FOO=bar", "--cwd", "/tmp", cid, "sh", "-c", "echo $FOO; pwd")
    assert out.stdout.split() == ["bar", "/tmp"]
    out = rt.run("exec", cid, "sh", "-c", "exit 7")
    assert out.returncode == 7
    out = rt.run("exec", "--user", "65534:65534", cid, "id", "-u")
    assert out.stdout.strip() == "65534"


def test_console_socket_receives_working_pty(rt, tmp_path, busybox_rootfs):
    sock_path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    bundle, config = make_bundle(tmp_path, busybox_rootfs, ["sh", "-c", "tty; read x; echo got-$x"])
    config["process"]["terminal"] = True
    write_config(bundle, config)
    cid = container_id()
    proc = subprocess.Popen(
        rt.cmd("create", "--bundle", str(bundle), "--console-socket", sock_path, cid),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    server.settimeout(30)
    conn, _ = server.accept()
    _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    conn.close()
    server.close()
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    master = fds[0]
    assert rt.run_detached("start", cid).returncode == 0
    os.write(master, b"hello\n")
    output = b""
    deadline = time.monotonic() + 10
    while b"got-hello" not in output and time.monotonic() < deadline:
        try:
            output += os.read(master, 1024)
        except OSError:
            break
    os.close(master)
    assert b"/dev/pts/" in output or b"/dev/console" in output
    assert b"got-hello" in output


def test_rlimits_apply(rt, tmp_path, busybox_rootfs):
    def edit(config):
        config["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 777}]

    bundle, _ = config_with(tmp_path, busybox_rootfs, "ulimit -n; ulimit -Hn", edit)
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.stdout.split() == ["512", "777"], out.stderr


def test_host_fds_do_not_leak_in(rt, tmp_path, busybox_rootfs):
    leaked = os.open("/etc/hostname", os.O_RDONLY)
    os.set_inheritable(leaked, True)
    try:
        bundle, _ = make_bundle(tmp_path, busybox_rootfs, ["ls", "/proc/self/fd"])
        cmd = Runtime(rt.root).cmd("run", "--bundle", str(bundle), container_id())
        out = subprocess.run(cmd, capture_output=True, text=True, pass_fds=(leaked,), timeout=60)
    finally:
        os.close(leaked)
    assert out.returncode == 0, out.stderr
    # 0-2 and the fd ls opened on the directory itself.
    assert sorted(int(fd) for fd in out.stdout.split()) == [0, 1, 2, 3]


def test_user_namespace_mappings(rt, tmp_path, busybox_rootfs):
    def edit(config):
        config["linux"]["namespaces"].append({"type": "user"})
        config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        config["mounts"] = [m for m in config["mounts"] if m["type"] not in ("cgroup",)]

    # The mapped root (host uid 100000) must be able to reach the rootfs.
    for parent in [busybox_rootfs, *busybox_rootfs.parents]:
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    os.chown(busybox_rootfs, 100000, 100000)
    bundle, _ = config_with(tmp_path, busybox_rootfs, "cat /proc/self/uid_map; id -u", edit)
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "100000", "65536", "0"]


def test_user_namespace_with_a_seccomp_profile(rt, tmp_path, busybox_rootfs):
    """Stage 1 loads the seccomp modules before it becomes the mapped uid, which may
    not read Hull's install dir (CI's clone is mode 0700); the mapped root cannot
    read the root-only filter cache either, and compiles instead."""

    def edit(config):
        config["linux"]["namespaces"].append({"type": "user"})
        config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        config["mounts"] = [m for m in config["mounts"] if m["type"] not in ("cgroup",)]
        config["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ],
        }

    for parent in [busybox_rootfs, *busybox_rootfs.parents]:
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    os.chown(busybox_rootfs, 100000, 100000)
    script = "id -u; mkdir /made 2>/dev/null || echo blocked; rmdir /made 2>/dev/null; true"
    bundle, _ = config_with(tmp_path, busybox_rootfs, script, edit)
    for _ in range(2):  # the second start finds the filter cache (or cannot read it)
        out = rt.run("run", "--bundle", str(bundle), container_id())
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["0", "blocked"], out.stderr


def test_pause_resume_update(rt, tmp_path, busybox_rootfs):
    bundle, config = make_bundle(tmp_path, busybox_rootfs, ["sleep", "60"])
    cid = container_id()
    assert rt.run_detached("run", "--detach", "--bundle", str(bundle), cid).returncode == 0
    assert rt.run("pause", cid).returncode == 0
    assert rt.state(cid)["status"] == "paused"
    assert rt.run("resume", cid).returncode == 0
    assert rt.state(cid)["status"] == "running"
    assert rt.run("update", "--memory", "32m", "--pids-limit", "9", cid).returncode == 0
    mem_dir = [d for d in cgroup_dirs(config["linux"]["cgroupsPath"]) if "/memory/" in d][0]
    assert Path(mem_dir, "memory.limit_in_bytes").read_text().strip() == str(32 << 20)
    pids_dir = [d for d in cgroup_dirs(config["linux"]["cgroupsPath"]) if "/pids/" in d][0]
    assert Path(pids_dir, "pids.max").read_text().strip() == "9"


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c.__setitem__("ociVersion", 5), "ociVersion"),
        (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), "unknown namespace"),
        (
            lambda c: c["linux"].__setitem__(
                "uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}]
            ),
            "needs a user namespace",
        ),
        (lambda c: c["root"].__setitem__("path", "/does/not/exist"), "rootfs"),
        (
            lambda c: c["linux"]["resources"].__setitem__(
                "hugepageLimits", [{"pageSize": "2MB", "limit": 1 << 21}]
            ),
            "hugetlb",
        ),
        (lambda c: c["process"].__setitem__("args", []), "process.args"),
        (lambda c: c["linux"].__setitem__("sysctl", {"kernel.panic": "1"}), "not namespaced"),
    ],
)
def test_bad_configs_fail_cleanly(rt, tmp_path, busybox_rootfs, edit, message):
    bundle, config = make_bundle(tmp_path, busybox_rootfs, ["true"])
    edit(config)
    write_config(bundle, config)
    cid = container_id()
    out = rt.run("create", "--bundle", str(bundle), cid)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert not (rt.root / cid).exists()
    assert cgroup_dirs(config["linux"]["cgroupsPath"]) == []


def test_malformed_json_fails_cleanly(rt, tmp_path, busybox_rootfs):
    bundle, config = make_bundle(tmp_path, busybox_rootfs, ["true"])
    (bundle / "config.json").write_text('{"ociVersion": "1.1.0", ')
    cid = container_id()
    out = rt.run("create", "--bundle", str(bundle), cid)
    assert out.returncode != 0 and "not valid JSON" in out.stderr
    assert not (rt.root / cid).exists()


def test_log_json_on_error(rt, tmp_path, busybox_rootfs):
    log = tmp_path / "log.json"
    cmd = rt.cmd("state", "nope")
    cmd[3:3] = ["--log", str(log), "--log-format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode != 0
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"]


def test_devices_and_default_dev(rt, tmp_path, busybox_rootfs):
    def edit(config):
        config["linux"]["devices"] = [
            {"path": "/dev/fuse-test", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600}
        ]

    script = "ls -l /dev/null /dev/zero /dev/fuse-test /dev/ptmx /dev/fd; echo hi > /dev/null"
    bundle, _ = config_with(tmp_path, busybox_rootfs, script, edit)
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.returncode == 0, out.stderr
    assert "1,   3" in out.stdout and "10, 229" in out.stdout
    assert "crw-------" in out.stdout  # fileMode applied
    assert "/dev/ptmx -> pts/ptmx" in out.stdout
    assert not stat.S_ISCHR(os.lstat(busybox_rootfs / "dev").st_mode)


def test_spec_and_features(tmp_path):
    rt = Runtime(tmp_path / "state")
    out = rt.run("spec", "--bundle", str(tmp_path))
    assert out.returncode == 0
    spec = json.loads((tmp_path / "config.json").read_text())
    assert spec["ociVersion"].startswith("1.")
    assert rt.run("spec", "--bundle", str(tmp_path)).returncode != 0  # never overwrites
    features = json.loads(rt.run("features").stdout)
    assert "time" in features["linux"]["namespaces"]
    assert features["linux"]["seccomp"]["enabled"] is True


def test_join_existing_namespace_by_path(rt, tmp_path, busybox_rootfs):
    bundle, _ = make_bundle(tmp_path, busybox_rootfs, ["sleep", "60"])
    first = container_id()
    assert rt.run_detached("run", "--detach", "--bundle", str(bundle), first).returncode == 0
    pid = rt.state(first)["pid"]

    def edit(config):
        for ns in config["linux"]["namespaces"]:
            if ns["type"] in ("network", "uts"):
                ns["path"] = f"/proc/{pid}/ns/{'net' if ns['type'] == 'network' else 'uts'}"
        config.pop("hostname")

    bundle2, _ = config_with(tmp_path, busybox_rootfs, "readlink /proc/self/ns/net", edit)
    out = rt.run("run", "--bundle", str(bundle2), container_id())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == os.readlink(f"/proc/{pid}/ns/net")


def test_namespaces_the_config_leaves_out_are_the_hosts(rt, tmp_path, busybox_rootfs):
    """Stage 1's worker makes uts, ipc and network namespaces before the config is in
    (prefork.AHEAD_DEFAULT): a config without them must still get the host's."""

    def edit(config):
        kept = ("uts", "ipc", "network")
        config["linux"]["namespaces"] = [
            ns for ns in config["linux"]["namespaces"] if ns["type"] not in kept
        ]
        config.pop("hostname")

    script = "for n in net uts ipc; do readlink /proc/self/ns/$n; done"
    bundle, _ = config_with(tmp_path, busybox_rootfs, script, edit)
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.returncode == 0, out.stderr
    host = [os.readlink(f"/proc/self/ns/{name}") for name in ("net", "uts", "ipc")]
    assert out.stdout.split() == host


def test_the_launchers_worker_reads_the_config_for_its_namespaces(tmp_path, busybox_rootfs):
    """The hull-runtime launcher's worker makes ahead only the namespaces the bundle's
    config creates: one joined by path and one left as the host's come out right."""
    import sys

    launcher = Path(sys.executable).parent / "hull-runtime"
    if not launcher.exists():
        pytest.skip(f"{launcher} is missing: run `python -m hull.runtime.launcher`")

    def edit(config):
        config["linux"]["namespaces"] = [
            {"type": "network", "path": f"/proc/{os.getpid()}/ns/net"}
            if ns["type"] == "network"
            else ns
            for ns in config["linux"]["namespaces"]
            if ns["type"] != "ipc"
        ]

    script = "for n in net ipc uts; do readlink /proc/self/ns/$n; done"
    bundle, _ = config_with(tmp_path, busybox_rootfs, script, edit)
    out = subprocess.run(
        [str(launcher), "--root", str(tmp_path / "state"), "run", "--bundle", str(bundle),
         container_id()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    net, ipc, uts = out.stdout.split()
    assert net == os.readlink("/proc/self/ns/net")  # joined by path: ours
    assert ipc == os.readlink("/proc/self/ns/ipc")
    assert uts != os.readlink("/proc/self/ns/uts")  # its own, made ahead


def test_time_namespace_offsets(rt, tmp_path, busybox_rootfs):
    def edit(config):
        config["linux"]["namespaces"].append({"type": "time"})
        config["linux"]["timeOffsets"] = {"boottime": {"secs": 86400 * 365, "nanosecs": 0}}

    bundle, _ = config_with(tmp_path, busybox_rootfs, "cut -d. -f1 /proc/uptime", edit)
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.returncode == 0, out.stderr
    host_uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert int(out.stdout) >= 86400 * 365 + int(host_uptime) - 5


def test_no_pivot_moves_the_root(rt, tmp_path, busybox_rootfs):
    bundle, _ = make_bundle(tmp_path, busybox_rootfs, ["sh", "-c", "ls /; cat /proc/1/mountinfo"])
    out = rt.run("run", "--no-pivot", "--bundle", str(bundle), container_id())
    assert out.returncode == 0, out.stderr
    assert "bin" in out.stdout.split()
    assert "/work" not in out.stdout


def test_runtime_is_not_reachable_from_inside(rt, tmp_path, busybox_rootfs):
    """CVE-2019-5736 class: neither the interpreter nor hull's files nor the state dir."""
    import sys

    interpreter = os.path.realpath(sys.executable)
    hull_dir = str(Path(__file__).resolve().parents[2] / "hull")
    script = (
        f"ls {interpreter} {hull_dir} {rt.root} 2>&1 | grep -c 'No such file';"
        # ls in a subshell: a pipe or a redirection made by PID 1 (the shell) itself
        # would be among the fds it lists (ash runs ls in-process, saving fd 1 as 10).
        "readlink /proc/1/exe; (ls /proc/1/fd > /tmp/.fds); tr '\\n' ' ' < /tmp/.fds"
    )
    bundle, _ = make_bundle(tmp_path, busybox_rootfs, ["sh", "-c", script])
    out = rt.run("run", "--bundle", str(bundle), container_id())
    assert out.returncode == 0, out.stderr
    missing, exe, fds = out.stdout.splitlines()
    assert missing == "3"
    assert exe == "/bin/busybox"  # PID 1 is the workload, not a Python interpreter
    assert fds.split() == ["0", "1", "2"]


def test_run_with_terminal_proxies_our_tty(rt, tmp_path, busybox_rootfs):
    """No --console-socket: hull-runtime itself copies between its tty and the pty."""
    import pty

    bundle, config = make_bundle(tmp_path, busybox_rootfs, ["sh"])
    config["process"]["terminal"] = True
    config["process"]["env"] = ["PATH=/bin:/usr/bin", "TERM=dumb"]
    write_config(bundle, config)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        rt.cmd("run", "--bundle", str(bundle), container_id()),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    output = b""
    sent = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        readable, _, _ = select.select([master], [], [], 0.2)
        if readable:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            output += chunk
        if not sent and b"# " in output:  # the shell is ready: type a command line
            os.write(master, b"tty; echo hi-$((1+2)); exit 5\n")
            sent = True
        if proc.poll() is not None and not readable:
            break
    assert proc.wait(timeout=20) == 5, output
    os.close(master)
    assert b"hi-3" in output
    assert b"/dev/pts/0" in output  # the container's own devpts instance


def test_signals_are_forwarded_in_the_foreground(rt, tmp_path, busybox_rootfs):
    script = "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"
    bundle, _ = make_bundle(tmp_path, busybox_rootfs, ["sh", "-c", script])
    proc = subprocess.Popen(
        rt.cmd("run", "--bundle", str(bundle), container_id()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(15)
    assert proc.wait(timeout=20) == 42


def test_hook_timeout_fails_create(rt, tmp_path, busybox_rootfs):
    hooks = {"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]}
    bundle, config = make_bundle(tmp_path, busybox_rootfs, ["true"], hooks=hooks)
    cid = container_id()
    start = time.monotonic()
    out = rt.run_detached("create", "--bundle", str(bundle), cid)
    assert out.returncode != 0
    assert "timed out after 1s" in out.stderr
    assert time.monotonic() - start < 20
    assert not (rt.root / cid).exists()
    assert cgroup_dirs(config["linux"]["cgroupsPath"]) == []
