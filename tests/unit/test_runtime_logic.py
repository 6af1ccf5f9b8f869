"""Pure logic of hull-runtime: spec validation, flags, mount options, signals."""

from __future__ import annotations

import copy

import pytest

from hull.errors import ConfigError
from hull.oci import runtime_spec
from hull.runtime import fastjson
from hull.runtime.cli import GLOBAL_FLAGS, parse_flags
from hull.runtime.commands.exec import FLAGS as EXEC_FLAGS
from hull.runtime.commands.kill import parse_signal
from hull.runtime.commands.update import parse_bytes, resources_from_flags
from hull.runtime.linux import mountopts
from hull.runtime.linux import syscalls as sc
from hull.runtime.linux.namespaces import format_id_map, new_flags
from hull.runtime.state import check_id


def spec() -> dict:
    return copy.deepcopy(runtime_spec.default_spec())


def test_default_spec_is_valid():
    assert runtime_spec.validate(spec())["ociVersion"] == runtime_spec.OCI_VERSION


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c.pop("process"), "process is required"),
        (lambda c: c["process"].__setitem__("args", "sh"), "process.args"),
        (lambda c: c["process"].__setitem__("cwd", "relative"), "absolute"),
        (lambda c: c["process"].__setitem__("env", ["NOEQUALS"]), "KEY=VALUE"),
        (lambda c: c["linux"]["namespaces"].append({"type": "pid"}), "listed twice"),
        (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), "unknown namespace"),
        (lambda c: c["mounts"].append({"destination": "rel"}), "must be absolute"),
        (lambda c: c.__setitem__("hooks", {"onboot": []}), "unknown hook kind"),
        (lambda c: c.__setitem__("hooks", {"poststop": [{"path": "x"}]}), "absolute"),
        (
            lambda c: c["process"].__setitem__(
                "rlimits", [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]
            ),
            "soft 10 is above hard 5",
        ),
        (
            lambda c: c["process"].__setitem__("rlimits", [{"type": "RLIMIT_BOGUS"}]),
            "unknown rlimit",
        ),
        (lambda c: c["linux"]["namespaces"].pop(3), "no uts namespace"),  # hostname without uts
        (lambda c: c["linux"].__setitem__("sysctl", {"net.ipv4.ip_forward": 1}), "must be str"),
        (lambda c: c["linux"].__setitem__("sysctl", {"vm.swappiness": "1"}), "not namespaced"),
        (
            lambda c: c["linux"]["namespaces"].append({"type": "user"}),
            "needs linux.uidMappings",
        ),
        (
            lambda c: c["linux"].__setitem__("devices", [{"path": "/etc/x", "type": "c"}]),
            "under /dev",
        ),
        (lambda c: c["process"].__setitem__("oomScoreAdj", 5000), "oomScoreAdj"),
        (lambda c: c["linux"].__setitem__("rootfsPropagation", "sideways"), "propagation"),
    ],
)
def test_validate_rejects_with_field_named(edit, message):
    config = spec()
    edit(config)
    with pytest.raises(ConfigError) as err:
        runtime_spec.validate(config)
    assert message in err.value.message


def test_sysctl_needs_its_namespace():
    config = spec()
    config["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000"}
    runtime_spec.validate(config)
    config["linux"]["namespaces"] = [n for n in config["linux"]["namespaces"] if n["type"] != "ipc"]
    with pytest.raises(ConfigError, match="ipc namespace"):
        runtime_spec.validate(config)


def test_effective_resources_keep_default_devices_usable():
    config = spec()
    res = runtime_spec.effective_resources(config)
    assert res is not None
    devices = res["devices"]
    assert devices == [{"allow": False, "access": "rwm"}]  # the config's own rules
    config["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
    res = runtime_spec.effective_resources(config)
    assert res is not None and res["devices"][-1]["minor"] == 229


def test_namespaces_and_flags():
    config = spec()
    config["linux"]["namespaces"].append({"type": "user", "path": "/proc/1/ns/user"})
    nss = runtime_spec.namespaces_of(config)
    assert nss["user"] == "/proc/1/ns/user" and nss["pid"] is None
    flags = new_flags(nss)
    assert flags & sc.CLONE_NEWPID and flags & sc.CLONE_NEWNS
    assert not flags & sc.CLONE_NEWUSER  # joined, not created
    maps = [
        {"containerID": 0, "hostID": 1000, "size": 1},
        {"containerID": 1, "hostID": 2, "size": 3},
    ]
    assert format_id_map(maps) == "0 1000 1\n1 2 3\n"


def test_mount_options_to_flags():
    opts = mountopts.parse(["nosuid", "nodev", "ro", "rbind", "rprivate", "mode=755", "size=1k"])
    assert opts.flags == sc.MS_NOSUID | sc.MS_NODEV | sc.MS_RDONLY | sc.MS_BIND | sc.MS_REC
    assert opts.propagation == [sc.MS_PRIVATE | sc.MS_REC]
    assert opts.data == ["mode=755", "size=1k"]
    assert mountopts.parse(["ro", "rw"]).flags == 0  # later options win
    assert mountopts.parse(["rro"]).flags == sc.MS_RDONLY
    assert mountopts.statvfs_to_ms(1 | 2 | 4096) == sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_RELATIME


def test_runc_style_flags():
    opts, args = parse_flags(
        ["--root", "/r", "--debug", "create", "--bundle", "b"], GLOBAL_FLAGS, 1
    )
    assert opts == {"root": "/r", "debug": True}
    assert args == ["create", "--bundle", "b"]
    opts, args = parse_flags(["--root=/x", "run"], GLOBAL_FLAGS, 1)
    assert opts["root"] == "/x"
    # exec: flags up to the command, the command's own flags verbatim
    opts, args = parse_flags(
        ["-e", "A=1", "--env", "B=2", "--tty", "c1", "sh", "-c", "echo -e"], EXEC_FLAGS, 2
    )
    assert opts == {"env": ["A=1", "B=2"], "tty": True}
    assert args == ["c1", "sh", "-c", "echo -e"]
    with pytest.raises(ConfigError, match="unknown flag --nope"):
        parse_flags(["--nope"], GLOBAL_FLAGS)
    with pytest.raises(ConfigError, match="needs a value"):
        parse_flags(["--root"], GLOBAL_FLAGS)


def test_signals():
    assert parse_signal("KILL") == parse_signal("SIGKILL") == parse_signal("9") == 9
    assert parse_signal("term") == 15
    assert parse_signal("RTMIN+2") == 36
    with pytest.raises(ConfigError):
        parse_signal("SIGNOPE")
    with pytest.raises(ConfigError):
        parse_signal("99")


def test_update_flags():
    assert parse_bytes("64m") == 64 << 20
    assert parse_bytes("1g") == 1 << 30
    assert parse_bytes("512kb") == 512 << 10
    assert parse_bytes("-1") == -1
    with pytest.raises(ConfigError):
        parse_bytes("lots")
    res = resources_from_flags({"memory": "32m", "cpu_shares": "512", "pids_limit": "10"})
    assert res == {
        "memory": {"limit": 32 << 20},
        "cpu": {"shares": 512},
        "pids": {"limit": 10},
    }


@pytest.mark.parametrize("good", ["abc", "a-b_c.d", "x" * 64, "A1+2"])
def test_container_ids_ok(good):
    assert check_id(good) == good


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a b", "ü", "x" * 1025])
def test_container_ids_rejected(bad):
    with pytest.raises(ConfigError):
        check_id(bad)


def test_fastjson_round_trip_and_errors():
    data = {"a": [1, 2.5, "x", None, True], "b": {"c": "é"}}
    assert fastjson.loads(fastjson.dumps(data)) == data
    assert fastjson.loads(b'  {"k": 1}\n') == {"k": 1}
    for bad in ['{"a": }', '{"a": 1', "[1, 2] extra", ""]:
        with pytest.raises(ValueError):
            fastjson.loads(bad)
