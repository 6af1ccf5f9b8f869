"""Pure logic behind the lean start path of `hull-runtime run`: the early-forked
stage 1's request, the channel, the early/late split of mounts, state removal."""

from __future__ import annotations

import os
import threading

import pytest

from hull.runtime.channel import Channel
from hull.runtime.init import InitRequest
from hull.runtime.linux.rootfs import RootfsBuilder, _nested
from hull.runtime.state import StateStore


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
    req = _request()
    again = InitRequest.from_json(req.to_json())
    for name in InitRequest.__slots__:
        assert getattr(again, name) == getattr(req, name), name
    assert "\n" not in req.to_json()  # one channel line


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
