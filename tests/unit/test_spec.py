"""build_spec: RunConfig + image config -> config.json with Docker's defaults.

No root: the rootfs is a temp dir holding a tiny /etc/passwd and /etc/group.
Every spec built here also goes through hull.oci.runtime_spec.validate.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import pytest

from hull.engine import spec as spec_mod
from hull.engine.runconfig import (
    MountSpec,
    RestartPolicy,
    RunConfig,
    parse_mount,
    parse_tmpfs,
    parse_volume,
)
from hull.engine.spec import all_caps, build_spec, docker_profile_to_oci, host_devices
from hull.engine.userdb import match_user, parse_group, parse_passwd, resolve_user
from hull.errors import ConfigError
from hull.oci.default_seccomp import DOCKER_DEFAULT_CAPS, default_seccomp
from hull.oci.runtime_spec import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, validate
from hull.runtime.linux.capabilities import CAPS, last_cap

CID = "0123456789ab" + "c" * 52
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App User:/home/app:/bin/sh
broken line
nohome:x:1001:1001
"""
GROUP = """\
root:x:0:
wheel:x:10:root,app
app:x:1000:
audio:x:29:app, daemon
staff:x:50:
"""
IMAGE: dict[str, Any] = {"Cmd": ["sh"], "Env": ["PATH=/usr/bin:/bin"]}


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


@pytest.fixture
def container_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ctr"
    d.mkdir()
    return d


def _volumes(spec: MountSpec) -> str:
    return f"/var/lib/hull/volumes/{spec.source or 'anon' + spec.target.replace('/', '-')}/_data"


def build(
    rootfs: Path,
    container_dir: Path,
    image: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    run = RunConfig(image="busybox:latest", **fields)
    result = build_spec(
        run,
        IMAGE if image is None else image,
        CID,
        container_dir,
        rootfs,
        volume_source=_volumes,
        init_binary="/usr/bin/catatonit",
        warnings=warnings,
    )
    json.dumps(result)  # plain JSON data, ready for config.json
    assert validate(result) is result
    return result


def _mount(spec: dict[str, Any], destination: str) -> dict[str, Any]:
    (found,) = [m for m in spec["mounts"] if m["destination"] == destination]
    return found


def _env(spec: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in spec["process"]["env"])


# ---------------------------------------------------------------- the plain run


def test_plain_run_has_dockers_defaults(rootfs: Path, container_dir: Path) -> None:
    spec = build(rootfs, container_dir)
    process = spec["process"]
    assert process["args"] == ["sh"]
    assert process["cwd"] == "/"
    assert process["terminal"] is False
    assert process["user"] == {"uid": 0, "gid": 0, "additionalGids": [10]}
    assert process["noNewPrivileges"] is False
    assert "rlimits" not in process
    assert process["env"] == [
        "PATH=/usr/bin:/bin",
        f"HOSTNAME={CID[:12]}",
        "HOME=/root",
    ]
    caps = process["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert caps[kind] == list(DOCKER_DEFAULT_CAPS)
    assert caps["inheritable"] == [] and caps["ambient"] == []
    assert spec["hostname"] == CID[:12]
    assert spec["root"] == {"path": str(rootfs), "readonly": False}
    assert spec["annotations"] == {
        "org.hull.image": "busybox:latest",
        "org.hull.stop-signal": "SIGTERM",
    }
    linux = spec["linux"]
    assert [n["type"] for n in linux["namespaces"]] == [
        "pid",
        "ipc",
        "uts",
        "mount",
        "network",
        "cgroup",
    ]
    assert all("path" not in n for n in linux["namespaces"])
    assert linux["cgroupsPath"] == f"/hull/{CID}"
    assert linux["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert linux["maskedPaths"] == DEFAULT_MASKED_PATHS
    assert linux["readonlyPaths"] == DEFAULT_READONLY_PATHS
    assert linux["seccomp"] == default_seccomp(DOCKER_DEFAULT_CAPS)
    assert linux["sysctl"] == {
        "net.ipv4.ip_unprivileged_port_start": "0",
        "net.ipv4.ping_group_range": "0 2147483647",
    }
    assert "devices" not in linux


def test_default_mounts_then_etc_files(rootfs: Path, container_dir: Path) -> None:
    spec = build(rootfs, container_dir)
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/sys",
        "/sys/fs/cgroup",
        "/dev/mqueue",
        "/dev/shm",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
    ]
    assert _mount(spec, "/sys")["options"][-1] == "ro"
    assert "ro" in _mount(spec, "/sys/fs/cgroup")["options"]
    shm = _mount(spec, "/dev/shm")
    assert shm["type"] == "tmpfs"
    assert set(shm["options"]) == {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}
    devpts = _mount(spec, "/dev/pts")
    assert {"newinstance", "ptmxmode=0666", "mode=0620", "gid=5"} <= set(devpts["options"])
    hosts = _mount(spec, "/etc/hosts")
    assert hosts == {
        "destination": "/etc/hosts",
        "type": "bind",
        "source": str(container_dir / "hosts"),
        "options": ["rbind", "rprivate"],
    }


# ---------------------------------------------------------------- entrypoint and cmd


@pytest.mark.parametrize(
    ("image", "entrypoint", "command", "expected"),
    [
        ({"Cmd": ["sh"]}, None, None, ["sh"]),
        ({"Cmd": ["sh"]}, None, ["echo", "hi"], ["echo", "hi"]),
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, None, None, ["/ep", "a"]),
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, None, ["b", "c"], ["/ep", "b", "c"]),
        ({"Entrypoint": ["/ep"]}, None, None, ["/ep"]),
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, ["/other"], None, ["/other"]),
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, ["/other"], ["x"], ["/other", "x"]),
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, [], ["x", "y"], ["x", "y"]),
        ({"Cmd": ["sh"]}, ["sh -c"], None, ["sh -c"]),
    ],
)
def test_entrypoint_and_cmd(
    rootfs: Path,
    container_dir: Path,
    image: dict,
    entrypoint: list[str] | None,
    command: list[str] | None,
    expected: list[str],
) -> None:
    spec = build(rootfs, container_dir, image=image, entrypoint=entrypoint, command=command)
    assert spec["process"]["args"] == expected


@pytest.mark.parametrize(
    ("image", "entrypoint"),
    [
        ({}, None),
        ({"Cmd": None, "Entrypoint": None}, None),
        ({"Entrypoint": ["/e"], "Cmd": ["a"]}, []),
    ],
)
def test_no_command(rootfs: Path, container_dir: Path, image: dict, entrypoint: Any) -> None:
    with pytest.raises(ConfigError, match="no command specified"):
        build(rootfs, container_dir, image=image, entrypoint=entrypoint)


# ---------------------------------------------------------------- env, cwd, hostname, tty


def test_env_merging(rootfs: Path, container_dir: Path) -> None:
    image = {"Cmd": ["sh"], "Env": ["A=1", "B=2", "DROP=me", "HOME=/img"]}
    spec = build(
        rootfs,
        container_dir,
        image=image,
        env=["B=3", "C=x=y", "DROP", "HOSTNAME=custom"],
        tty=True,
    )
    assert spec["process"]["env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOSTNAME=custom",
        "TERM=xterm",
        "A=1",
        "B=3",
        "HOME=/img",
        "C=x=y",
    ]
    assert spec["process"]["terminal"] is True


def test_workdir_and_hostname(rootfs: Path, container_dir: Path) -> None:
    image = {"Cmd": ["sh"], "WorkingDir": "/app/"}
    assert build(rootfs, container_dir, image=image)["process"]["cwd"] == "/app"
    spec = build(rootfs, container_dir, image=image, workdir="/srv", hostname="box")
    assert spec["process"]["cwd"] == "/srv"
    assert spec["hostname"] == "box" and _env(spec)["HOSTNAME"] == "box"


def test_stop_signal_annotation(rootfs: Path, container_dir: Path) -> None:
    image = {"Cmd": ["sh"], "StopSignal": "SIGQUIT"}
    annotations = build(rootfs, container_dir, image=image)["annotations"]
    assert annotations["org.hull.stop-signal"] == "SIGQUIT"
    annotations = build(rootfs, container_dir, image=image, stop_signal="usr1")["annotations"]
    assert annotations["org.hull.stop-signal"] == "SIGUSR1"


def test_labels_are_not_annotations(rootfs: Path, container_dir: Path) -> None:
    spec = build(rootfs, container_dir, labels={"com.example": "x"})
    assert "com.example" not in spec["annotations"]


# ---------------------------------------------------------------- users


@pytest.mark.parametrize(
    ("user", "uid", "gid", "extra", "home"),
    [
        ("app", 1000, 1000, [10, 29], "/home/app"),
        ("1000", 1000, 1000, [10, 29], "/home/app"),
        ("app:staff", 1000, 50, [], "/home/app"),
        ("1000:50", 1000, 50, [], "/home/app"),
        ("app:4242", 1000, 4242, [], "/home/app"),
        ("4242", 4242, 0, [], "/"),
        ("4242:4243", 4242, 4243, [], "/"),
        ("daemon", 1, 1, [29], "/usr/sbin"),
        ("nohome", 1001, 1001, [], "/"),
        ("", 0, 0, [10], "/root"),
    ],
)
def test_user_resolution(
    rootfs: Path, container_dir: Path, user: str, uid: int, gid: int, extra: list[int], home: str
) -> None:
    spec = build(rootfs, container_dir, user=user)
    assert spec["process"]["user"]["uid"] == uid
    assert spec["process"]["user"]["gid"] == gid
    assert spec["process"]["user"].get("additionalGids", []) == extra
    assert _env(spec)["HOME"] == home


def test_image_user_and_env_home(rootfs: Path, container_dir: Path) -> None:
    image = {"Cmd": ["sh"], "User": "app", "Env": ["HOME=/data"]}
    spec = build(rootfs, container_dir, image=image)
    assert spec["process"]["user"]["uid"] == 1000
    assert _env(spec)["HOME"] == "/data"
    # --user wins over the image's User
    assert build(rootfs, container_dir, image=image, user="0")["process"]["user"]["uid"] == 0


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("nobody", "unable to find user nobody: no matching entries in passwd file"),
        ("app:nogroup", "unable to find group nogroup: no matching entries in group file"),
        ("-1", "uids and gids must be in range"),
        ("app:99999999999", "uids and gids must be in range"),
    ],
)
def test_user_errors(rootfs: Path, container_dir: Path, user: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(rootfs, container_dir, user=user)


def test_users_without_etc_files(tmp_path: Path, container_dir: Path) -> None:
    empty = tmp_path / "empty-rootfs"
    empty.mkdir()
    spec = build(empty, container_dir, user="123:456")
    assert spec["process"]["user"] == {"uid": 123, "gid": 456}
    with pytest.raises(ConfigError, match="unable to find user app"):
        build(empty, container_dir, user="app")


def test_passwd_symlink_stays_in_the_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "srv").mkdir()
    (root / "srv" / "real-passwd").write_text("only:x:77:77::/only:/bin/sh\n")
    # Absolute and escaping links resolve inside the rootfs, never on the host.
    (root / "etc" / "passwd").symlink_to("/srv/real-passwd")
    (root / "etc" / "group").symlink_to("../../../../../../etc/group-not-here")
    user = resolve_user(root, "only")
    assert (user.uid, user.gid, user.home, user.additional_gids) == (77, 77, "/only", [])


def test_parsers_skip_malformed_lines() -> None:
    assert [p.name for p in parse_passwd(PASSWD)] == ["root", "daemon", "app", "nohome"]
    groups = parse_group(GROUP + "bad:x:notanumber:\n")
    assert [g.name for g in groups] == ["root", "wheel", "app", "audio", "staff"]
    assert groups[3].members == ("app", "daemon")
    assert match_user(None, parse_passwd(PASSWD), groups).home == "/root"


# ---------------------------------------------------------------- capabilities, privileged


def _caps(spec: dict[str, Any]) -> list[str]:
    caps = spec["process"]["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"]
    return caps["bounding"]


def test_cap_add_and_drop(rootfs: Path, container_dir: Path) -> None:
    spec = build(rootfs, container_dir, cap_add=["CAP_SYS_ADMIN"], cap_drop=["CAP_CHOWN"])
    caps = _caps(spec)
    assert "CAP_SYS_ADMIN" in caps and "CAP_CHOWN" not in caps
    assert len(caps) == len(DOCKER_DEFAULT_CAPS)
    # The seccomp profile follows the capabilities: CAP_SYS_ADMIN lets mount through.
    assert any("mount" in rule["names"] for rule in spec["linux"]["seccomp"]["syscalls"])
    plain = build(rootfs, container_dir)
    assert not any("mount" in rule["names"] for rule in plain["linux"]["seccomp"]["syscalls"])


def test_cap_drop_all_keeps_only_adds(rootfs: Path, container_dir: Path) -> None:
    spec = build(rootfs, container_dir, cap_drop=["ALL"], cap_add=["CAP_NET_BIND_SERVICE"])
    assert _caps(spec) == ["CAP_NET_BIND_SERVICE"]
    assert _caps(build(rootfs, container_dir, cap_drop=["ALL"])) == []


def test_cap_add_all_minus_drops(rootfs: Path, container_dir: Path) -> None:
    every = all_caps()
    caps = _caps(build(rootfs, container_dir, cap_add=["ALL"], cap_drop=["CAP_SYS_ADMIN"]))
    assert caps == [c for c in every if c != "CAP_SYS_ADMIN"]
    # add ALL wins over drop ALL, as in moby's TweakCapabilities
    assert _caps(build(rootfs, container_dir, cap_add=["ALL"], cap_drop=["ALL"])) == every


def test_all_caps_are_the_ones_we_hold() -> None:
    """A privileged container gets what the kernel knows and we hold: asking for more
    makes capset fail (this host, for one, lacks CAP_SYS_RESOURCE)."""
    with open("/proc/self/status") as f:
        held = int(next(line for line in f if line.startswith("CapBnd:")).split()[1], 16)
    every = all_caps()
    assert every == sorted(every, key=CAPS.__getitem__)
    assert all(CAPS[c] <= last_cap() and held >> CAPS[c] & 1 for c in every)
    assert set(DOCKER_DEFAULT_CAPS) <= set(every)
    missing = [c for c, n in CAPS.items() if n <= last_cap() and not held >> n & 1]
    assert not set(missing) & set(every)


def test_unknown_capability(rootfs: Path, container_dir: Path) -> None:
    with pytest.raises(ConfigError, match='unknown capability: "CAP_FLY"'):
        build(rootfs, container_dir, cap_add=["CAP_FLY"])


def test_privileged(rootfs: Path, container_dir: Path) -> None:
    spec = build(rootfs, container_dir, privileged=True, cap_drop=["CAP_CHOWN"])
    assert _caps(spec) == all_caps()  # --privileged ignores --cap-drop
    linux = spec["linux"]
    assert "seccomp" not in linux
    assert linux["maskedPaths"] == [] and linux["readonlyPaths"] == []
    assert "ro" not in _mount(spec, "/sys")["options"]
    assert "ro" not in _mount(spec, "/sys/fs/cgroup")["options"]
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    paths = {d["path"]: d for d in linux["devices"]}
    assert paths["/dev/null"]["type"] == "c"
    assert (paths["/dev/null"]["major"], paths["/dev/null"]["minor"]) == (1, 3)
    assert not any(p.startswith("/dev/pts/") for p in paths)
    assert "/dev/console" not in paths and "/dev/ptmx" not in paths


def test_host_devices_walks_subdirectories() -> None:
    devices = host_devices()
    assert all(d["type"] in ("c", "b") and d["path"].startswith("/dev/") for d in devices)
    expected = [
        f"/dev/{rel}"
        for rel in ("net/tun", "null", "zero")
        if os.path.exists(f"/dev/{rel}") and not os.path.islink(f"/dev/{rel}")
    ]
    paths = [d["path"] for d in devices]
    assert set(expected) <= set(paths)
    assert len(paths) == len(set(paths))


def test_no_new_privileges(rootfs: Path, container_dir: Path) -> None:
    spec = build(rootfs, container_dir, security_opt=["no-new-privileges"])
    assert spec["process"]["noNewPrivileges"] is True
    spec = build(rootfs, container_dir, security_opt=["no-new-privileges:false"])
    assert spec["process"]["noNewPrivileges"] is False


# ---------------------------------------------------------------- seccomp


def test_seccomp_unconfined(rootfs: Path, container_dir: Path) -> None:
    spec = build(rootfs, container_dir, security_opt=["seccomp=unconfined"])
    assert "seccomp" not in spec["linux"]


DOCKER_PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "always"},
        {"name": "ptrace", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}],
        },
        {"names": ["future"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
        {
            "names": ["kill"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 38,
            "excludes": {"caps": ["CAP_KILL"]},
        },
    ],
}


def test_docker_profile_conversion() -> None:
    oci = docker_profile_to_oci(DOCKER_PROFILE, ["CAP_KILL"], machine="x86_64")
    assert oci == {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}],
            },
        ],
    }
    arm = docker_profile_to_oci(DOCKER_PROFILE, ["CAP_SYS_PTRACE"], machine="aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    names = [rule["names"] for rule in arm["syscalls"]]
    assert ["ptrace"] in names and ["kill"] in names and ["arch_prctl"] not in names


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"syscalls": []}, "defaultAction is required"),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "archMap": [{}],
            },
            "both 'architectures' and 'archMap'",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"name": "a", "names": ["b"], "action": "x"}],
            },
            "either 'name' or 'names'",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"]}]},
            "needs names and an action",
        ),
    ],
)
def test_docker_profile_errors(profile: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        docker_profile_to_oci(profile, [])


def test_seccomp_from_file_and_inline(rootfs: Path, container_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(DOCKER_PROFILE))
    from_file = build(rootfs, container_dir, security_opt=[f"seccomp={path}"])
    inline = build(rootfs, container_dir, security_opt=["seccomp=" + json.dumps(DOCKER_PROFILE)])
    expected = docker_profile_to_oci(DOCKER_PROFILE, list(DOCKER_DEFAULT_CAPS))
    assert from_file["linux"]["seccomp"] == inline["linux"]["seccomp"] == expected
    with pytest.raises(ConfigError, match="opening seccomp profile"):
        build(rootfs, container_dir, security_opt=[f"seccomp={tmp_path / 'nope.json'}"])
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="decoding seccomp profile"):
        build(rootfs, container_dir, security_opt=[f"seccomp={path}"])


# ---------------------------------------------------------------- rootfs, init


def test_read_only(rootfs: Path, container_dir: Path) -> None:
    spec = build(rootfs, container_dir, read_only=True)
    assert spec["root"]["readonly"] is True
    assert _mount(spec, "/etc/resolv.conf")["options"] == ["rbind", "rprivate", "ro"]


def test_init(rootfs: Path, container_dir: Path) -> None:
    image = {"Entrypoint": ["/ep"], "Cmd": ["a"]}
    spec = build(rootfs, container_dir, image=image, init=True)
    assert spec["process"]["args"] == ["/dev/init", "--", "/ep", "a"]
    init = spec["mounts"][-1]
    assert init == {
        "destination": "/dev/init",
        "type": "bind",
        "source": "/usr/bin/catatonit",
        "options": ["bind", "ro"],
    }


def test_init_binary_search(
    rootfs: Path, container_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "tini-static"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setattr(spec_mod, "INIT_CANDIDATES", (str(tmp_path / "missing"), str(fake)))
    run = RunConfig("busybox", init=True)
    spec = build_spec(run, IMAGE, CID, container_dir, rootfs)
    assert spec["mounts"][-1]["source"] == str(fake)
    monkeypatch.setattr(spec_mod, "INIT_CANDIDATES", (str(tmp_path / "missing"),))
    with pytest.raises(ConfigError, match="install catatonit or tini"):
        build_spec(run, IMAGE, CID, container_dir, rootfs)


# ---------------------------------------------------------------- user mounts


def test_user_mounts_in_order_parents_first(
    rootfs: Path, container_dir: Path, tmp_path: Path
) -> None:
    host = tmp_path / "host"
    (host / "inner").mkdir(parents=True)
    mounts = [
        parse_mount(f"type=bind,source={host / 'inner'},target=/data/inner,readonly"),
        parse_volume(f"{host}:/data"),
        parse_volume("cache:/cache:ro"),
        parse_volume("/anon"),
        parse_tmpfs("/run:size=1m,mode=1777,exec"),
        parse_mount(f"type=bind,source={host},target=/shared,bind-propagation=rshared"),
    ]
    spec = build(rootfs, container_dir, mounts=mounts)
    user = spec["mounts"][7:]
    assert [m["destination"] for m in user] == [
        "/data",
        "/cache",
        "/anon",
        "/run",
        "/shared",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/data/inner",
    ]
    by_dest = {m["destination"]: m for m in user}
    assert by_dest["/data"] == {
        "destination": "/data",
        "type": "bind",
        "source": str(host),
        "options": ["rbind", "rprivate", "rw"],
    }
    assert by_dest["/data/inner"]["options"] == ["rbind", "rprivate", "ro"]
    assert by_dest["/shared"]["options"] == ["rbind", "rshared", "rw"]
    assert by_dest["/cache"] == {
        "destination": "/cache",
        "type": "bind",
        "source": "/var/lib/hull/volumes/cache/_data",
        "options": ["rbind", "rprivate", "ro"],
    }
    assert by_dest["/anon"]["source"] == "/var/lib/hull/volumes/anon-anon/_data"
    assert by_dest["/run"] == {
        "destination": "/run",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", "rprivate", f"size={1 << 20}", "mode=1777", "rw"],
    }


def test_user_mount_replaces_defaults(rootfs: Path, container_dir: Path, tmp_path: Path) -> None:
    hosts = tmp_path / "my-hosts"
    hosts.write_text("127.0.0.1 me\n")
    mounts = [
        parse_tmpfs("/dev/shm:size=128m"),
        parse_mount(f"type=bind,source={hosts},target=/etc/hosts,readonly"),
    ]
    spec = build(rootfs, container_dir, mounts=mounts)
    shm = [m for m in spec["mounts"] if m["destination"] == "/dev/shm"]
    assert len(shm) == 1 and f"size={128 << 20}" in shm[0]["options"]
    etc_hosts = [m for m in spec["mounts"] if m["destination"] == "/etc/hosts"]
    assert etc_hosts == [
        {
            "destination": "/etc/hosts",
            "type": "bind",
            "source": str(hosts),
            "options": ["rbind", "rprivate", "ro"],
        }
    ]


def test_bind_sources(rootfs: Path, container_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"
    with pytest.raises(ConfigError, match="bind source path does not exist"):
        build(rootfs, container_dir, mounts=[parse_mount(f"type=bind,src={missing},dst=/x")])
    assert not missing.exists()
    # -v creates a missing host directory, as Docker does.
    build(rootfs, container_dir, mounts=[parse_volume(f"{missing}:/x")])
    assert missing.is_dir()


def test_volume_needs_a_store(rootfs: Path, container_dir: Path) -> None:
    run = RunConfig("busybox", mounts=[parse_volume("data:/data")])
    with pytest.raises(ConfigError, match="no volume store"):
        build_spec(run, IMAGE, CID, container_dir, rootfs)


def test_no_host_dir_made_when_the_spec_fails(
    rootfs: Path, container_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "stays-missing"
    with pytest.raises(ConfigError, match="unable to find user"):
        build(rootfs, container_dir, user="ghost", mounts=[parse_volume(f"{missing}:/x")])
    assert not missing.exists()


# ---------------------------------------------------------------- resources


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"memory": 64 << 20}, {"memory": {"limit": 64 << 20, "swap": 128 << 20}}),
        ({"memory": 64 << 20, "memory_swap": -1}, {"memory": {"limit": 64 << 20, "swap": -1}}),
        (
            {"memory": 64 << 20, "memory_swap": 100 << 20},
            {"memory": {"limit": 64 << 20, "swap": 100 << 20}},
        ),
        ({"memory_swap": -1}, {"memory": {"swap": -1}}),
        ({"cpus": 1.5}, {"cpu": {"quota": 150000, "period": 100000}}),
        ({"cpus": 0.01}, {"cpu": {"quota": 1000, "period": 100000}}),
        ({"cpu_shares": 512, "cpuset_cpus": "0"}, {"cpu": {"shares": 512, "cpus": "0"}}),
        ({"pids_limit": 64}, {"pids": {"limit": 64}}),
        ({"pids_limit": -1}, {}),
    ],
)
def test_resources(rootfs: Path, container_dir: Path, fields: dict, expected: dict) -> None:
    resources = build(rootfs, container_dir, **fields)["linux"]["resources"]
    assert resources == {"devices": [{"allow": False, "access": "rwm"}], **expected}


def test_invalid_resources_are_rejected(rootfs: Path, container_dir: Path) -> None:
    with pytest.raises(ConfigError, match="Conflicting options"):
        build(rootfs, container_dir, rm=True, restart=RestartPolicy("always"))
    with pytest.raises(ConfigError, match="always set the Memory limit"):
        build(rootfs, container_dir, memory_swap=1 << 30)


# ---------------------------------------------------------------- rlimits


def test_ulimits_within_the_hard_limit(rootfs: Path, container_dir: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    warnings: list[str] = []
    ulimits = [{"type": "RLIMIT_NOFILE", "soft": 64, "hard": min(hard, 128)}]
    spec = build(rootfs, container_dir, ulimits=ulimits, warnings=warnings)
    assert spec["process"]["rlimits"] == ulimits
    assert warnings == []


def test_ulimit_above_the_hard_limit_is_clamped(rootfs: Path, container_dir: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("RLIMIT_NOFILE has no hard limit here")
    warnings: list[str] = []
    ulimits = [{"type": "RLIMIT_NOFILE", "soft": hard + 10, "hard": -1}]
    spec = build(rootfs, container_dir, ulimits=ulimits, warnings=warnings)
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": hard, "hard": hard}]
    assert len(warnings) == 1 and "nofile" in warnings[0] and str(hard) in warnings[0]


def test_unlimited_ulimit_becomes_rlim_infinity(rootfs: Path, container_dir: Path) -> None:
    limits = {
        name: resource.getrlimit(getattr(resource, name))[1]
        for name in ("RLIMIT_CORE", "RLIMIT_STACK", "RLIMIT_FSIZE", "RLIMIT_CPU")
    }
    unlimited = [name for name, hard in limits.items() if hard == resource.RLIM_INFINITY]
    if not unlimited:
        pytest.skip("no rlimit without a hard limit here")
    kind = unlimited[0]
    spec = build(rootfs, container_dir, ulimits=[{"type": kind, "soft": 0, "hard": -1}])
    assert spec["process"]["rlimits"] == [{"type": kind, "soft": 0, "hard": 2**64 - 1}]


# ---------------------------------------------------------------- network


def test_network_host(rootfs: Path, container_dir: Path) -> None:
    spec = build(rootfs, container_dir, network="host")
    kinds = [n["type"] for n in spec["linux"]["namespaces"]]
    assert "network" not in kinds and "uts" in kinds
    assert spec["hostname"] == os.uname().nodename
    assert "sysctl" not in spec["linux"]
    assert build(rootfs, container_dir, network="host", hostname="h")["hostname"] == "h"


def test_clamp_warning_goes_to_logging_without_a_list(
    rootfs: Path, container_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("RLIMIT_NOFILE has no hard limit here")
    ulimits = [{"type": "RLIMIT_NOFILE", "soft": hard + 1, "hard": hard + 1}]
    with caplog.at_level("WARNING", logger="hull.engine.spec"):
        build(rootfs, container_dir, ulimits=ulimits)
    assert any("above the hard limit" in r.getMessage() for r in caplog.records)


def test_network_namespace_path_and_hostname_override(rootfs: Path, container_dir: Path) -> None:
    run = RunConfig(image="busybox:latest", network="web")
    spec = build_spec(
        run, IMAGE, CID, container_dir, rootfs, netns_path="/run/hull/netns/x", hostname="other"
    )
    validate(spec)
    network = [n for n in spec["linux"]["namespaces"] if n["type"] == "network"]
    assert network == [{"type": "network", "path": "/run/hull/netns/x"}]
    assert spec["hostname"] == "other"
    assert "HOSTNAME=other" in spec["process"]["env"]
    plain = build(rootfs, container_dir)
    assert {"type": "network"} in plain["linux"]["namespaces"]
