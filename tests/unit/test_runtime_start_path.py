"""Pure logic behind the lean start path of `hull-runtime run`: the early-forked
stage 1 (when the launcher forks it, its request, its end), the channel, the
early/late split of mounts, state removal, syscalls without the ctypes package."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest

from hull.runtime import cli
from hull.runtime.channel import Channel, ChannelClosed
from hull.runtime.cli import GLOBAL_FLAGS
from hull.runtime.container import _last_error, _own_pid_namespace
from hull.runtime.init import InitRequest, _report
from hull.runtime.linux import syscalls as sc
from hull.runtime.linux.rootfs import RootfsBuilder, _nested
from hull.runtime.prefork import (
    GLOBAL_VALUE_FLAGS,
    PREFORK_VERBS,
    Stage1Worker,
    prefork,
    wants_stage1,
)
from hull.runtime.state import StateStore
from tests.fixtures.launcher_python import launcher_stdout


def _request(**changes: object) -> InitRequest:
    fields: dict = {
        "config": {"process": {"args": ["/bin/true"], "env": ["A=é"]}, "mounts": []},
        "rootfs": "/b/rootfs",
        "bundle": "/b",
        "state_dir": "/run/x/c1",
        "namespaces": {"pid": None, "network": "/proc/1/ns/net"},
        "console_fd": None,
        "no_pivot": False,
        "wait_fifo": True,
        "preserve_fds": 2,
        "hooks_in_init": False,
    }
    fields.update(changes)
    return InitRequest(**fields)


def test_init_request_survives_the_channel_encoding():
    # A newline inside a value must not end the channel's line.
    req = _request(config={"process": {"args": ["sh", "-c", "a\nb"], "env": ["A=é"]}})
    parent, child = Channel.pair()
    try:
        req.send(parent)
        again = InitRequest.receive(child)
    finally:
        parent.close()
        child.close()
    for name in InitRequest.__slots__:
        assert getattr(again, name) == getattr(req, name), name


def test_channel_carries_a_payload_larger_than_a_pipe_buffer():
    parent, child = Channel.pair()
    payload = "x" * (300 * 1024)  # a config with a big seccomp profile, say
    sender = threading.Thread(target=parent.send, args=("req", payload))
    sender.start()  # blocks until the reader drains the pipe, part by part
    try:
        kind, received = child.recv()
        sender.join()
    finally:
        parent.close()
        child.close()
    assert (kind, received) == ("req", payload)


@pytest.mark.parametrize(
    "a,b,nested",
    [
        ("/proc", "/proc/sys", True),
        ("/proc/sys/", "/proc", True),
        ("/dev", "/dev", True),
        ("/", "/dev", True),
        ("/dev", "/devices", False),
        ("/sys", "/sys/fs/cgroup", True),
        ("/dev/shm", "/proc", False),
    ],
)
def test_nested_paths(a, b, nested):
    assert _nested(a, b) is nested


def test_early_mounts_keep_the_configs_order_where_it_matters():
    builder = RootfsBuilder({"mounts": []}, "/b/rootfs", "/b", {}, False, False)
    proc = {"destination": "/proc", "type": "proc", "source": "proc"}
    assert not builder._early(proc)  # proc shows the mounter's pid namespace: PID 1's
    builder.late.append(proc)
    assert builder._early({"destination": "/dev", "type": "tmpfs"})
    assert not builder._early({"destination": "/proc/acpi", "type": "tmpfs"})  # under proc
    assert not builder._early({"destination": "/sys/fs/cgroup", "type": "cgroup"})
    assert not builder._early({"destination": "/data", "type": "bind", "source": "/srv"})
    assert not builder._early({"destination": "/data", "type": "none", "options": ["rbind"]})


def test_state_store_remove_takes_leftovers_too(tmp_path):
    store = StateStore(str(tmp_path / "root"))
    for name, extra in (("c1", ()), ("c2", ("exec.fifo", "state.json.tmp"))):
        state = store.new(name, {"bundle": "/b"})
        state.save()
        for leftover in extra:
            (tmp_path / "root" / name / leftover).write_text("")
        store.remove(name)
        assert not os.path.exists(state.dir)
    store.remove("never-made")  # already gone is fine
    assert store.ids() == []


# ------------------------------------------------------------------ prefork


@pytest.mark.parametrize(
    "argv,wanted",
    [
        (["run", "--bundle", "/b", "c1"], True),
        (["create", "c1"], True),
        (["--root", "/r", "--log", "/l", "run", "c1"], True),
        (["--root=/r", "--debug", "create", "--bundle", "/b", "c1"], True),
        (["--log-format", "json", "--cgroup-manager", "cgroupfs", "run", "c1"], True),
        (["--root", "run", "state", "c1"], False),  # "run" is --root's value
        (["run", "--help"], False),
        (["create", "-h"], False),
        (["--help", "run", "c1"], False),
        (["--version"], False),
        (["state", "run"], False),
        (["exec", "c1", "run"], False),
        ([], False),
        (["--", "run"], False),
    ],
)
def test_launcher_forks_stage1_only_for_create_and_run(argv, wanted):
    assert wants_stage1(argv) is wanted


def test_prefork_knows_every_global_flag_that_takes_a_value():
    takes_value = {name for name, (_, value, _) in GLOBAL_FLAGS.items() if value}
    assert takes_value == set(GLOBAL_VALUE_FLAGS)
    assert set(PREFORK_VERBS) == set(cli.PREFORK_VERBS)


def _children() -> set[int]:
    tid = threading.get_native_id()
    text = Path(f"/proc/self/task/{tid}/children").read_text()
    return {int(pid) for pid in text.split()}


def test_an_unused_worker_exits_and_is_reaped():
    before = _children()
    worker = prefork()
    assert worker.pid > 0
    worker.discard()
    assert worker.pid == 0
    assert _children() == before  # the worker and the PID 1 it made: reaped, none left
    worker.discard()  # twice is fine (cli.main and the engine both call it)


def test_a_taken_worker_is_the_takers_to_end():
    before = _children()
    worker = prefork()
    assert worker.pid1 is (os.geteuid() == 0)  # root may make a pid namespace
    pid, chan = worker.take()
    assert pid > 0 and worker.pid == 0
    worker.discard()  # taken: not ours to end
    assert pid in _children()
    chan.close()  # unused after all: it sees EOF and exits
    os.waitpid(pid, 0)
    assert _children() == before


def test_a_pid1_worker_fits_only_a_new_pid_namespace_alone():
    worker = Stage1Worker(123, Channel(-1, -1), pid1=True)
    assert worker.usable_for({"pid": None, "mount": None, "network": "/proc/1/ns/net"})
    assert not worker.usable_for({"pid": "/proc/1/ns/pid"})  # joins one: needs a child
    assert not worker.usable_for({"mount": None})  # the host's pid namespace
    assert not worker.usable_for({"pid": None, "user": None})  # the userns must own it
    assert not worker.usable_for({"pid": None, "time": None})
    assert Stage1Worker(123, Channel(-1, -1)).usable_for({"user": None, "time": None})
    assert not Stage1Worker(0, Channel(-1, -1)).usable_for({})  # gone: fork anew


def test_take_hands_over_the_worker_so_discard_leaves_it_alone():
    parent, child = Channel.pair()
    worker = Stage1Worker(12345678, parent)
    assert worker.take() == (12345678, parent)
    worker.discard()  # does not close the channel create() now owns
    parent.send("x")
    assert child.recv() == ("x", "")
    parent.close()
    child.close()


# ------------------------------------------------------------------ syscalls on _ctypes


def test_syscalls_does_not_import_the_ctypes_package():
    code = (
        "import hull.runtime.linux.syscalls, hull.runtime.linux.mountattr,"
        " hull.runtime.linux.sibling, hull.runtime.prefork\n"
        "print('ctypes' in sys.modules)"
    )
    assert launcher_stdout(code) == "False"


def test_structures_are_laid_out_as_the_kernel_reads_them():
    how = sc.u64_array(1, 2, 3)  # struct open_how
    assert sc.sizeof(how) == 24 and list(how) == [1, 2, 3]
    header = sc.u32_array(0x20080522, 7)  # struct __user_cap_header_struct
    assert sc.sizeof(header) == 8 and bytes(header)[:4] == (0x20080522).to_bytes(4, "little")


def test_capget_matches_proc_status():
    effective, permitted, _ = sc.capget()
    status = dict(
        line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
    )
    assert effective == int(status["CapEff"], 16)
    assert permitted == int(status["CapPrm"], 16)


def test_prlimit_reads_what_getrlimit_reads():
    import resource

    soft, hard = sc.prlimit(0, resource.RLIMIT_NOFILE)
    expected = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert (soft, hard) == tuple(sc.RLIM_INFINITY if v < 0 else v for v in expected)


def test_syscall_errors_are_oserrors_with_errno(tmp_path):
    with pytest.raises(OSError) as err:
        sc.openat2(os.open(tmp_path, os.O_PATH), "../x", os.O_RDONLY, 0, sc.RESOLVE_BENEATH)
    assert err.value.errno == errno.EXDEV and "openat2 ../x" in str(err.value)
    with pytest.raises(OSError) as err:
        sc.setns(-1, 0)
    assert err.value.errno == errno.EBADF
    assert sc.prctl(sc.PR_GET_NO_NEW_PRIVS) in (0, 1)


def test_openat2_stays_beneath_its_directory(tmp_path):
    (tmp_path / "inside").write_text("ok")
    os.symlink("/etc/passwd", tmp_path / "escape")
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = sc.openat2(root, "inside", os.O_RDONLY, 0, sc.RESOLVE_IN_ROOT)
        assert os.read(fd, 10) == b"ok"
        os.close(fd)
        with pytest.raises(OSError) as err:
            sc.openat2(root, "escape", os.O_RDONLY, 0, sc.RESOLVE_NO_SYMLINKS)
        assert err.value.errno == errno.ELOOP
    finally:
        os.close(root)


def test_libc_is_still_there_for_callers_off_the_start_path():
    assert sc.libc.syscall(39) == os.getpid()  # getpid on x86_64 and through ctypes


# ------------------------------------------------------------------ errors and teardown


def test_an_error_reported_before_exit_is_read_after_a_failed_send():
    """Stage 1 may report and exit before our next send: the message is not lost."""
    parent, child = Channel.pair()
    child.send("error", "cannot create namespaces: Operation not permitted")
    child.close()  # it exited
    with pytest.raises(ChannelClosed):
        parent.send("go")
    assert _last_error(parent) == "cannot create namespaces: Operation not permitted"
    parent.close()


def test_no_error_is_none():
    parent, child = Channel.pair()
    child.send("pid", "42")
    child.close()
    assert _last_error(parent) is None
    assert _last_error(None) is None
    parent.close()


def test_a_waiting_reader_does_not_block_when_asked_not_to():
    parent, child = Channel.pair()  # the child end stays open: nothing to read yet
    os.set_blocking(parent.rfd, False)
    assert _last_error(parent) is None
    parent.close()
    child.close()


@pytest.mark.parametrize(
    "namespaces,own",
    [
        ([{"type": "pid"}, {"type": "mount"}], True),
        ([{"type": "pid", "path": "/proc/1/ns/pid"}], False),  # joined: others may live on
        ([{"type": "mount"}], False),  # the host's pid namespace
    ],
)
def test_the_fast_teardown_needs_a_pid_namespace_of_its_own(namespaces, own):
    assert _own_pid_namespace({"linux": {"namespaces": namespaces}}) is own
    assert _own_pid_namespace(None) is False


def test_child_errors_go_to_the_runtime_not_twice_to_stderr(capfd):
    parent, child = Channel.pair()
    _report(child, "exec: 'x': executable file not found in $PATH")
    assert parent.recv() == ("error", "exec: 'x': executable file not found in $PATH")
    assert capfd.readouterr().err == ""  # the runtime prints it, once
    parent.close()
    _report(child, "nobody listens")  # `start` after `create` exited: stderr it is
    assert "hull-runtime: nobody listens" in capfd.readouterr().err
    child.close()


def test_prefork_clone_flags_match_the_syscall_module():
    """prefork spells the flags out (it loads before linux.syscalls may)."""
    from hull.runtime import prefork
    from hull.runtime.linux import syscalls

    assert prefork.CLONE_NEWUTS == syscalls.CLONE_NEWUTS
    assert prefork.CLONE_NEWIPC == syscalls.CLONE_NEWIPC
    assert prefork.CLONE_NEWNET == syscalls.CLONE_NEWNET


@pytest.mark.parametrize(
    ("argv", "bundle"),
    [
        (["run", "--bundle", "/b1", "c1"], "/b1"),
        (["--root", "/r", "create", "-b", "/b2", "c1"], "/b2"),
        (["run", "--bundle=/b3", "c1"], "/b3"),
        (["run", "-d", "c1"], None),  # the working directory
    ],
)
def test_the_worker_finds_the_bundle_config_in_argv(argv, bundle):
    from hull.runtime.prefork import bundle_config

    expected = os.path.join(bundle or os.getcwd(), "config.json")
    assert bundle_config(argv) == expected


def test_the_worker_makes_ahead_only_what_the_config_creates(tmp_path):
    from hull.runtime.init import _new_in_config
    from hull.runtime.linux import syscalls

    def flags_for(namespaces):
        path = tmp_path / "config.json"
        path.write_text(json.dumps({"linux": {"namespaces": namespaces}}))
        return _new_in_config(str(path))

    default = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    assert flags_for(default) == (
        syscalls.CLONE_NEWNET | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWUTS
    )
    joined = [{"type": "network", "path": "/run/netns/x"}, {"type": "uts"}]
    assert flags_for(joined) == syscalls.CLONE_NEWUTS
    assert flags_for([{"type": "user"}, {"type": "network"}]) == 0  # the user ns owns them
    assert flags_for("not a list") == 0
    assert _new_in_config(str(tmp_path / "missing.json")) == 0
