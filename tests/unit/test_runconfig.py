"""RunConfig and the parsers of `hull run` flag values: Docker's spellings and errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hull.engine import runconfig as rc
from hull.engine.runconfig import MountSpec, RestartPolicy, RunConfig
from hull.errors import ConfigError

# ---------------------------------------------------------------- sizes and numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512m", 512 * 1024**2),
        ("512M", 512 * 1024**2),
        ("1g", 1024**3),
        ("1.5g", 3 * 1024**3 // 2),
        ("100", 100),
        ("10kb", 10 * 1024),
        ("10KiB", 10 * 1024),
        ("2 MB", 2 * 1024**2),
        ("1t", 1024**4),
    ],
)
def test_parse_memory(text: str, expected: int) -> None:
    assert rc.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "m", "-5m", "12x", "1.2.3g", "5 m b c"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid memory size"):
        rc.parse_memory(text)


def test_parse_memory_swap_unlimited() -> None:
    assert rc.parse_memory_swap("-1") == -1
    assert rc.parse_memory_swap("1g") == 1024**3
    with pytest.raises(ConfigError):
        rc.parse_memory_swap("-2")


@pytest.mark.parametrize(("text", "expected"), [("1.5", 1.5), ("2", 2.0), (".5", 0.5)])
def test_parse_cpus(text: str, expected: float) -> None:
    assert rc.parse_cpus(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "not a decimal"),
        ("-1", "not a decimal"),
        ("0", "above 0"),
        ("0.0000000001", "too precise"),
    ],
)
def test_parse_cpus_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rc.parse_cpus(text)


@pytest.mark.parametrize("text", ["0", "0-1", "0,1", "0-1,3"])
def test_parse_cpuset_accepts(text: str) -> None:
    assert rc.parse_cpuset(text) == text


@pytest.mark.parametrize("text", ["", "a", "1-", "3-1", "0,,1", "-1"])
def test_parse_cpuset_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="cpuset"):
        rc.parse_cpuset(text)


# ---------------------------------------------------------------- restart, ulimit, signals


@pytest.mark.parametrize(
    ("text", "name", "retries"),
    [
        ("no", "no", 0),
        ("always", "always", 0),
        ("unless-stopped", "unless-stopped", 0),
        ("on-failure", "on-failure", 0),
        ("on-failure:3", "on-failure", 3),
    ],
)
def test_parse_restart(text: str, name: str, retries: int) -> None:
    policy = rc.parse_restart(text)
    assert (policy.name, policy.max_retries) == (name, retries)
    assert str(policy) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sometimes", "unknown policy 'sometimes'"),
        ("always:3", "cannot be used with restart policy 'always'"),
        ("on-failure:x", "must be an integer"),
        ("on-failure:-1", "cannot be negative"),
    ],
)
def test_parse_restart_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rc.parse_restart(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nofile=1024:2048", {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}),
        ("nproc=50", {"type": "RLIMIT_NPROC", "soft": 50, "hard": 50}),
        ("memlock=-1:-1", {"type": "RLIMIT_MEMLOCK", "soft": -1, "hard": -1}),
        ("core=0:-1", {"type": "RLIMIT_CORE", "soft": 0, "hard": -1}),
    ],
)
def test_parse_ulimit(text: str, expected: dict) -> None:
    assert rc.parse_ulimit(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nofile", "invalid ulimit argument"),
        ("files=1", "invalid ulimit type: files"),
        ("nofile=a:b", "invalid ulimit argument"),
        ("nofile=2048:1024", "soft limit must be less than or equal to hard limit"),
        ("nofile=-1:1024", "soft limit must be less than or equal to hard limit"),
        ("nofile=-5", "invalid ulimit argument"),
    ],
)
def test_parse_ulimit_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rc.parse_ulimit(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TERM", "SIGTERM"),
        ("sigkill", "SIGKILL"),
        ("SIGUSR1", "SIGUSR1"),
        ("15", "SIGTERM"),
        ("9", "SIGKILL"),
        ("SIGRTMIN+3", "SIGRTMIN+3"),
        ("rtmax-1", "SIGRTMAX-1"),
    ],
)
def test_parse_signal(text: str, expected: str) -> None:
    assert rc.parse_signal(text) == expected


def test_signal_number_round_trip() -> None:
    import signal

    assert rc.signal_number("SIGTERM") == signal.SIGTERM
    assert rc.signal_number(rc.parse_signal("SIGRTMIN+2")) == signal.SIGRTMIN + 2
    assert rc.signal_number(rc.parse_signal("36")) == 36


@pytest.mark.parametrize("text", ["0", "NOPE", "SIGRTMIN+99", "999", ""])
def test_parse_signal_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="Invalid signal"):
        rc.parse_signal(text)


# ---------------------------------------------------------------- environment


def test_parse_env_takes_bare_keys_from_the_host() -> None:
    host = {"FROM_HOST": "yes"}
    assert rc.parse_env("A=1", host) == "A=1"
    assert rc.parse_env("A=", host) == "A="
    assert rc.parse_env("FROM_HOST", host) == "FROM_HOST=yes"
    assert rc.parse_env("NOT_SET", host) == "NOT_SET"  # a bare key unsets it in the container
    with pytest.raises(ConfigError, match="invalid environment variable"):
        rc.parse_env("=x", host)


def test_parse_env_file_follows_docker_rules(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_text(
        "\ufeff# a comment\n"
        "\n"
        "A=1\n"
        "  B=two words  \n"
        'QUOTED="kept"\n'
        "   # indented comment\n"
        "FROM_HOST\n"
        "MISSING\n"
        "EMPTY=\n"
        "C=x=y\n"
    )
    env = rc.parse_env_file(str(path), {"FROM_HOST": "h"})
    assert env == ["A=1", "B=two words  ", 'QUOTED="kept"', "FROM_HOST=h", "EMPTY=", "C=x=y"]


@pytest.mark.parametrize(
    ("content", "message"),
    [("BAD KEY=1\n", "contains whitespaces"), ("=value\n", "no variable name")],
)
def test_parse_env_file_rejects(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "env"
    path.write_text("OK=1\n" + content)
    with pytest.raises(ConfigError, match=f"line 2: .*{message}|line 2: {message}"):
        rc.parse_env_file(str(path), {})


def test_parse_env_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        rc.parse_env_file(str(tmp_path / "nope"), {})


def test_key_values_and_log_opts() -> None:
    assert rc.parse_key_values(["a=1", "b", "c=x=y"], "label") == {"a": "1", "b": "", "c": "x=y"}
    assert rc.parse_log_opts(["max-size=10m", "max-file=3"]) == {"max-size": "10m", "max-file": "3"}
    with pytest.raises(ConfigError, match="unknown log opt 'colour'"):
        rc.parse_log_opts(["colour=blue"])
    with pytest.raises(ConfigError, match="max-file cannot be less than 1"):
        rc.parse_log_opts(["max-file=0"])
    with pytest.raises(ConfigError, match="invalid max-size size"):
        rc.parse_log_opts(["max-size=big"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        rc.parse_key_values(["=1"], "label")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("net_admin", "CAP_NET_ADMIN"), ("CAP_SYS_ADMIN", "CAP_SYS_ADMIN"), ("all", "ALL")],
)
def test_normalize_cap(text: str, expected: str) -> None:
    assert rc.normalize_cap(text) == expected


# ---------------------------------------------------------------- mounts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ctr", MountSpec("volume", None, "/ctr")),
        ("/ctr/", MountSpec("volume", None, "/ctr")),
        ("data:/ctr", MountSpec("volume", "data", "/ctr")),
        ("data:/ctr:ro", MountSpec("volume", "data", "/ctr", True)),
        ("data:/ctr:ro,nocopy", MountSpec("volume", "data", "/ctr", True, {"nocopy": "true"})),
        ("/a:/b", MountSpec("bind", "/a", "/b", False, {"create_host_path": "true"})),
        ("/a/:/b:rw", MountSpec("bind", "/a", "/b", False, {"create_host_path": "true"})),
        ("/a:/b:ro", MountSpec("bind", "/a", "/b", True, {"create_host_path": "true"})),
        (
            "/a:/b:ro,rshared,z",
            MountSpec(
                "bind", "/a", "/b", True, {"create_host_path": "true", "propagation": "rshared"}
            ),
        ),
    ],
)
def test_parse_volume(text: str, expected: MountSpec) -> None:
    assert rc.parse_volume(text) == expected


def test_parse_volume_relative_host_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    spec = rc.parse_volume("./data:/data")
    assert spec.type == "bind" and spec.source == str(tmp_path / "data")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid volume specification"),
        ("a:b:c:d", "invalid volume specification"),
        ("/a:ro", "invalid volume specification"),
        ("relative", "must be absolute"),
        ("/a:rel", "invalid volume specification"),
        ("/a:/", "destination can't be '/'"),
        ("bad/name:/x", "invalid characters for a local volume name"),
        ("x:/y", "invalid characters for a local volume name"),
        ("/a:/b:rx", "invalid mode: rx"),
        ("/a:/b:ro,rw", "invalid mode"),
        ("/a:/b:nocopy", "invalid mode"),
        ("vol:/b:rshared", "invalid mode"),
    ],
)
def test_parse_volume_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rc.parse_volume(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("type=bind,source=/a,target=/b,readonly", MountSpec("bind", "/a", "/b", True)),
        ("type=bind,src=/a,dst=/b,ro=false", MountSpec("bind", "/a", "/b", False)),
        (
            "type=bind,source=/a,destination=/b,bind-propagation=rslave",
            MountSpec("bind", "/a", "/b", False, {"propagation": "rslave"}),
        ),
        ("target=/data", MountSpec("volume", None, "/data")),
        ("type=volume,source=vol,target=/data", MountSpec("volume", "vol", "/data")),
        (
            "type=volume,src=vol,dst=/d,volume-nocopy,volume-driver=local,volume-opt=o=size=1",
            MountSpec(
                "volume",
                "vol",
                "/d",
                False,
                {"nocopy": "true", "driver": "local", "opt.o": "size=1"},
            ),
        ),
        (
            "type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1770",
            MountSpec("tmpfs", None, "/t", False, {"size": str(64 * 1024**2), "mode": "1770"}),
        ),
        ('type=bind,"source=/a,b",target=/c', MountSpec("bind", "/a,b", "/c")),
    ],
)
def test_parse_mount(text: str, expected: MountSpec) -> None:
    assert rc.parse_mount(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("type=bind,target=/b", "field Source must not be empty"),
        ("type=bind,source=/a", "field Target must not be empty"),
        ("type=tmpfs,source=x,target=/t", "field Source must not be specified"),
        ("type=nfs,target=/t", 'type "nfs": mount type unknown'),
        ("type=bind,source=/a,target=/b,colour=red", "unexpected key 'colour'"),
        ("type=bind,source=/a,target=/b,bogus", "must be a key=value pair"),
        ("type=bind,source=/a,target=/b,readonly=maybe", "invalid value for readonly"),
        ("type=bind,source=/a,target=/b,tmpfs-size=1m", "cannot mix 'tmpfs-\\*' options"),
        ("type=tmpfs,target=/t,volume-nocopy", "cannot mix 'volume-\\*' options"),
        ("type=tmpfs,target=/t,tmpfs-mode=999", "not an octal number"),
        ("type=bind,source=/a,target=/b,bind-propagation=weird", "bind-propagation"),
        ("type=bind,source=/a,target=rel", "must be absolute"),
        ('type=bind,"source=/a,target=/b', "unterminated quote"),
    ],
)
def test_parse_mount_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rc.parse_mount(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/run", MountSpec("tmpfs", None, "/run")),
        (
            "/run:size=64m,mode=1777",
            MountSpec("tmpfs", None, "/run", False, {"size": str(64 * 1024**2), "mode": "1777"}),
        ),
        ("/run:ro,size=50%", MountSpec("tmpfs", None, "/run", True, {"size": "50%"})),
        (
            "/run:rw,exec,uid=1000",
            MountSpec("tmpfs", None, "/run", False, {"exec": "", "uid": "1000"}),
        ),
    ],
)
def test_parse_tmpfs(text: str, expected: MountSpec) -> None:
    assert rc.parse_tmpfs(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("run", "must be absolute"),
        ("/run:size=lots", "invalid tmpfs size"),
        ("/run:mode=9", "octal"),
    ],
)
def test_parse_tmpfs_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rc.parse_tmpfs(text)


def test_image_volume_mounts_skip_taken_targets() -> None:
    run = RunConfig("img", mounts=[rc.parse_volume("data:/var/lib/db")])
    extra = rc.image_volume_mounts(run, {"Volumes": {"/var/lib/db": {}, "/logs/": {}, "/": {}}})
    assert extra == [MountSpec("volume", None, "/logs")]


# ---------------------------------------------------------------- security options


@pytest.mark.parametrize(
    ("values", "nnp", "seccomp"),
    [
        ([], False, None),
        (["no-new-privileges"], True, None),
        (["no-new-privileges:true"], True, None),
        (["no-new-privileges=false"], False, None),
        (["seccomp=unconfined"], False, "unconfined"),
        (["seccomp:/p.json", "no-new-privileges"], True, "/p.json"),
        (["apparmor=unconfined", "label=disable"], False, None),
    ],
)
def test_parse_security_opts(values: list[str], nnp: bool, seccomp: str | None) -> None:
    opts = rc.parse_security_opts(values)
    assert (opts.no_new_privileges, opts.seccomp) == (nnp, seccomp)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("apparmor=docker-default", "not supported"),
        ("label=type:svirt", "not supported"),
        ("colour=red", "invalid --security-opt"),
        ("seccomp=", "invalid --security-opt"),
        ("no-new-privileges=perhaps", "invalid value for no-new-privileges"),
    ],
)
def test_parse_security_opts_rejects(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rc.parse_security_opts([value])


# ---------------------------------------------------------------- RunConfig


def _full_config() -> RunConfig:
    return RunConfig(
        image="busybox:latest",
        command=["sh", "-c", "echo hi"],
        entrypoint=[],
        name="web",
        env=["A=1", "UNSET"],
        workdir="/srv",
        user="app:staff",
        hostname="box",
        tty=True,
        interactive=True,
        detach=True,
        rm=False,
        mounts=[
            rc.parse_volume("/a:/b:ro"),
            rc.parse_mount("type=tmpfs,target=/t,tmpfs-size=1m"),
            rc.parse_volume("/anon"),
        ],
        memory=64 * 1024**2,
        memory_swap=-1,
        cpus=1.5,
        cpu_shares=512,
        cpuset_cpus="0",
        pids_limit=100,
        ulimits=[{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}],
        cap_add=["CAP_NET_ADMIN"],
        cap_drop=["ALL"],
        privileged=False,
        read_only=True,
        security_opt=["no-new-privileges"],
        init=True,
        restart=RestartPolicy("on-failure", 3),
        labels={"a": "b"},
        stop_signal="SIGINT",
        stop_timeout=5,
        isolation="vm",
        network="host",
        platform="linux/amd64",
        pull="never",
        log_opts={"max-size": "1m"},
    )


def test_round_trip_through_json() -> None:
    run = _full_config()
    data = json.loads(json.dumps(run.to_dict()))
    assert RunConfig.from_dict(data) == run
    assert data["restart"] == {"name": "on-failure", "max_retries": 3}
    assert data["mounts"][0] == {
        "type": "bind",
        "source": "/a",
        "target": "/b",
        "readonly": True,
        "options": {"create_host_path": "true"},
    }


def test_to_dict_does_not_share_lists() -> None:
    run = _full_config()
    data = run.to_dict()
    data["env"].append("B=2")
    data["labels"]["x"] = "y"
    data["mounts"][0]["options"]["z"] = "1"
    assert run.env == ["A=1", "UNSET"] and "x" not in run.labels
    assert "z" not in run.mounts[0].options


def test_from_dict_fills_defaults_and_ignores_unknown_keys() -> None:
    run = RunConfig.from_dict({"image": "busybox", "future_field": 1})
    assert run == RunConfig("busybox")
    assert run.network == "none" and run.isolation == "container" and run.restart.name == "no"
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"command": ["x"]})


# ---------------------------------------------------------------- validate_run_config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"rm": True, "restart": RestartPolicy("always")},
            "Conflicting options: --restart and --rm",
        ),
        ({"name": "a"}, "Invalid container name"),
        ({"name": "bad name"}, "Invalid container name"),
        ({"memory": 1024}, "Minimum memory limit allowed is 6MB"),
        ({"memory": 64 << 20, "memory_swap": 32 << 20}, "should be larger than memory limit"),
        ({"memory_swap": 64 << 20}, "always set the Memory limit"),
        ({"cpus": 0.001}, "Range of CPUs is from 0.01"),
        ({"cpus": float((os.cpu_count() or 1) + 1)}, "Range of CPUs is from 0.01"),
        ({"cpuset_cpus": str(os.cpu_count() or 1)}, "Requested CPUs are not available"),
        ({"workdir": "srv"}, "needs to be an absolute path"),
        ({"hostname": "a b"}, "invalid hostname"),
        ({"hostname": "x" * 65}, "invalid hostname"),
        ({"cap_add": ["CAP_NOPE"]}, 'unknown capability: "CAP_NOPE"'),
        ({"isolation": "kvm"}, "invalid isolation"),
        ({"pull": "sometimes"}, "invalid pull policy"),
        ({"stop_signal": "SIGNOPE"}, "Invalid signal"),
        ({"stop_timeout": -2}, "stop timeout"),
        ({"security_opt": ["colour=red"]}, "invalid --security-opt"),
        (
            {"mounts": [rc.parse_volume("/a:/x"), rc.parse_tmpfs("/x")]},
            "Duplicate mount point: /x",
        ),
    ],
)
def test_validate_run_config_rejects(changes: dict, message: str) -> None:
    run = RunConfig("busybox", **changes)
    with pytest.raises(ConfigError, match=message):
        rc.validate_run_config(run)


def test_validate_run_config_normalises() -> None:
    run = rc.validate_run_config(
        RunConfig("busybox", name="/web", stop_signal="term", memory=6 << 20, memory_swap=-1)
    )
    assert run.name == "web" and run.stop_signal == "SIGTERM"
    # --rm with the "no" policy is fine, and -1 swap without memory too.
    rc.validate_run_config(RunConfig("busybox", rm=True, memory_swap=-1))


# ---------------------------------------------------------------- networking


def test_rows_from_before_networking_load_with_defaults() -> None:
    old = {"image": "busybox", "network": "none", "env": ["A=1"]}
    run = RunConfig.from_dict(old)
    assert run.ports == [] and run.publish_all is False and run.network_aliases == []
    assert run.ip is None and run.dns == [] and run.add_hosts == [] and run.extra_networks == []


def test_network_fields_round_trip_without_sharing() -> None:
    run = RunConfig(
        "busybox",
        network="web",
        ports=["8080:80"],
        publish_all=True,
        network_aliases=["db"],
        ip="10.89.0.9",
        dns=["1.1.1.1"],
        add_hosts=["h:10.0.0.1"],
        extra_networks=[{"network": "back", "aliases": ["x"], "ip": None}],
    )
    data = json.loads(json.dumps(run.to_dict()))
    assert RunConfig.from_dict(data) == run
    copied = run.to_dict()
    copied["extra_networks"][0]["aliases"].append("y")
    assert run.extra_networks[0]["aliases"] == ["x"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("none", "none"),
        ("host", "host"),
        ("default", "bridge"),
        ("my-net.1", "my-net.1"),
        ("container:abc", "container:abc"),
    ],
)
def test_check_network_mode(value: str, expected: str) -> None:
    from hull.engine.runconfig import check_network_mode

    assert check_network_mode(value) == expected


@pytest.mark.parametrize("value", ["container:", "-bad", "a/b", "a b"])
def test_check_network_mode_refuses(value: str) -> None:
    from hull.engine.runconfig import check_network_mode

    with pytest.raises(ConfigError):
        check_network_mode(value)


def test_parse_add_host_forms() -> None:
    from hull.engine.runconfig import parse_add_host

    assert parse_add_host("db:10.0.0.5") == "db:10.0.0.5"
    assert parse_add_host("db=10.0.0.5") == "db:10.0.0.5"
    assert parse_add_host("v6:[::1]") == "v6:::1"
    assert parse_add_host("gw:host-gateway") == "gw:host-gateway"
    with pytest.raises(ConfigError):
        parse_add_host("db:")


def test_network_helpers() -> None:
    from hull.engine.runconfig import is_user_network, uses_network

    assert not uses_network(RunConfig("b", network="none"))
    assert not uses_network(RunConfig("b", network="host"))
    assert not uses_network(RunConfig("b", network="container:x"))
    assert uses_network(RunConfig("b", network="bridge"))
    assert not is_user_network(RunConfig("b", network="bridge"))
    assert is_user_network(RunConfig("b", network="web"))
