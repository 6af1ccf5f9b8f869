"""`hull run/create` flags: argparse layout (Docker's spellings) and the RunConfig they make."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hull.cli.main import ArgumentParser, UsageError
from hull.cli.run_flags import add_run_flags, run_config_from_args
from hull.engine.runconfig import MountSpec, RestartPolicy, RunConfig
from hull.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    # The class hull.cli.main gives each verb: errors raise UsageError (exit 125).
    parser = ArgumentParser(prog="hull run")
    add_run_flags(parser)
    return parser


def _run(argv: list[str]) -> RunConfig:
    return run_config_from_args(_parser().parse_args(argv))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["busybox"], {"image": "busybox", "command": None, "network": "bridge"}),
        (["--isolation", "vm", "busybox"], {"network": "none"}),  # a microVM: no network yet
        (["busybox", "sh", "-c", "echo -l x"], {"command": ["sh", "-c", "echo -l x"]}),
        (
            ["-it", "--rm", "busybox", "ls", "-l", "-d"],
            {"tty": True, "interactive": True, "rm": True, "command": ["ls", "-l", "-d"]},
        ),
        (["-t", "busybox"], {"tty": True, "interactive": False}),
        (["-d", "--name", "web", "busybox"], {"detach": True, "name": "web"}),
        (["-h", "box", "busybox"], {"hostname": "box"}),
        (["--hostname=box", "busybox"], {"hostname": "box"}),
        (["-w", "/srv", "-u", "1000:50", "busybox"], {"workdir": "/srv", "user": "1000:50"}),
        (["--entrypoint", "sh -c", "busybox"], {"entrypoint": ["sh -c"], "command": None}),
        (["--entrypoint=", "busybox", "true"], {"entrypoint": [], "command": ["true"]}),
        (["-m", "512m", "busybox"], {"memory": 512 << 20, "memory_swap": None}),
        (["-m", "64m", "--memory-swap", "-1", "busybox"], {"memory_swap": -1}),
        (["-m", "64m", "--memory-swap=128m", "busybox"], {"memory_swap": 128 << 20}),
        (
            ["--cpus", "0.5", "-c", "512", "--cpuset-cpus", "0", "busybox"],
            {"cpus": 0.5, "cpu_shares": 512, "cpuset_cpus": "0"},
        ),
        (["--pids-limit", "100", "busybox"], {"pids_limit": 100}),
        (["--pids-limit", "-1", "busybox"], {"pids_limit": None}),
        (["--pids-limit", "0", "busybox"], {"pids_limit": None}),
        (
            ["--ulimit", "nofile=10:20", "--ulimit", "nproc=5", "--ulimit", "nofile=30", "busybox"],
            {
                "ulimits": [
                    {"type": "RLIMIT_NOFILE", "soft": 30, "hard": 30},
                    {"type": "RLIMIT_NPROC", "soft": 5, "hard": 5},
                ]
            },
        ),
        (
            ["--cap-add", "net_admin", "--cap-drop", "ALL", "busybox"],
            {"cap_add": ["CAP_NET_ADMIN"], "cap_drop": ["ALL"]},
        ),
        (
            ["--privileged", "--read-only", "--init", "busybox"],
            {"privileged": True, "read_only": True, "init": True},
        ),
        (["--restart", "on-failure:3", "busybox"], {"restart": RestartPolicy("on-failure", 3)}),
        (["--restart=always", "-d", "busybox"], {"restart": RestartPolicy("always", 0)}),
        (["--rm", "--restart", "no", "busybox"], {"rm": True}),
        (["-l", "a=1", "--label", "b", "busybox"], {"labels": {"a": "1", "b": ""}}),
        (
            ["--stop-signal", "int", "--stop-timeout", "3", "busybox"],
            {"stop_signal": "SIGINT", "stop_timeout": 3},
        ),
        (["--isolation", "vm", "busybox"], {"isolation": "vm"}),
        (["--net", "host", "busybox"], {"network": "host"}),
        (["--network=bridge", "busybox"], {"network": "bridge"}),
        (
            ["--platform", "linux/arm64", "--pull", "never", "busybox"],
            {"platform": "linux/arm64", "pull": "never"},
        ),
        (
            ["--log-opt", "max-size=1m", "--log-opt", "max-file=2", "busybox"],
            {"log_opts": {"max-size": "1m", "max-file": "2"}},
        ),
        (
            [
                "--security-opt",
                "no-new-privileges",
                "--security-opt",
                "seccomp=unconfined",
                "busybox",
            ],
            {"security_opt": ["no-new-privileges", "seccomp=unconfined"]},
        ),
        (
            [
                "-v",
                "/a:/b:ro",
                "--mount",
                "type=tmpfs,target=/t",
                "--tmpfs",
                "/run:size=1m",
                "-v",
                "/anon",
                "busybox",
            ],
            {
                "mounts": [
                    MountSpec("bind", "/a", "/b", True, {"create_host_path": "true"}),
                    MountSpec("volume", None, "/anon"),
                    MountSpec("tmpfs", None, "/t"),
                    MountSpec("tmpfs", None, "/run", False, {"size": str(1 << 20)}),
                ]
            },
        ),
    ],
)
def test_flags_make_run_config(argv: list[str], expected: dict) -> None:
    run = _run(argv)
    for key, value in expected.items():
        assert getattr(run, key) == value, key


def test_env_files_then_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = tmp_path / "first.env"
    first.write_text("A=from-file\nB=file\n# comment\nPASSED\n")
    monkeypatch.setenv("PASSED", "host-value")
    monkeypatch.setenv("HOSTVAR", "h")
    monkeypatch.delenv("NOT_ON_HOST", raising=False)
    run = _run(
        ["--env-file", str(first), "-e", "A=flag", "-e", "HOSTVAR", "-e", "NOT_ON_HOST", "busybox"]
    )
    assert run.env == [
        "A=from-file",
        "B=file",
        "PASSED=host-value",
        "A=flag",
        "HOSTVAR=h",
        "NOT_ON_HOST",
    ]


def test_seccomp_file_is_read_at_create(tmp_path: Path) -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile, indent=2))
    run = _run(["--security-opt", f"seccomp={path}", "busybox"])
    path.unlink()  # the container keeps the profile it was created with
    (option,) = run.security_opt
    assert option.startswith("seccomp={") and json.loads(option[8:]) == profile


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rm", "--restart", "always", "busybox"], "Conflicting options: --restart and --rm"),
        (["--rm", "--restart", "on-failure:2", "busybox"], "Conflicting options"),
        (["--restart", "sometimes", "busybox"], "unknown policy"),
        (["-m", "lots", "busybox"], "invalid memory size"),
        (["-m", "1m", "busybox"], "Minimum memory limit"),
        (["--memory-swap", "1g", "busybox"], "always set the Memory limit"),
        (["--cpus", "many", "busybox"], "--cpus"),
        (["-c", "x", "busybox"], "--cpu-shares"),
        (["--pids-limit", "x", "busybox"], "--pids-limit"),
        (["--stop-timeout", "soon", "busybox"], "--stop-timeout"),
        (["--ulimit", "bogus=1", "busybox"], "invalid ulimit type"),
        (["--cap-add", "FLY", "busybox"], 'unknown capability: "CAP_FLY"'),
        (["-v", "bad/name:/x", "busybox"], "invalid characters"),
        (["--mount", "type=bind,target=/x", "busybox"], "Source must not be empty"),
        (["-v", "/a:/x", "--tmpfs", "/x", "busybox"], "Duplicate mount point: /x"),
        (["--name", "no spaces", "busybox"], "Invalid container name"),
        (["-w", "relative", "busybox"], "absolute path"),
        (["--stop-signal", "NOPE", "busybox"], "Invalid signal"),
        (["--log-opt", "mode=fast", "busybox"], "unknown log opt"),
        (["--security-opt", "seccomp=/nonexistent/p.json", "busybox"], "opening seccomp profile"),
        (["--env-file", "/nonexistent/env", "busybox"], "no such file"),
        (["-e", "=x", "busybox"], "invalid environment variable"),
    ],
)
def test_bad_values_are_config_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _run(argv)
    assert info.value.exit_code == 125


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no image
        ["--isolation", "process", "busybox"],
        ["--pull", "sometimes", "busybox"],
        ["--memory"],
    ],
)
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        _parser().parse_args(argv)


def test_help_keeps_long_form_and_h_is_hostname() -> None:
    parser = _parser()
    text = parser.format_help()
    assert "--help" in text and "-h HOSTNAME, --hostname HOSTNAME" in text
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--help"])
    assert info.value.code == 0


def test_module_imports_only_argparse() -> None:
    """`hull run` is timed: importing the flags must not load the engine or runtime."""
    code = (
        "import sys, hull.cli.run_flags;"
        "print(sorted(m for m in sys.modules if m.startswith('hull.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['hull.cli', 'hull.cli.run_flags']"


# ---------------------------------------------------------------- networking flags


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["-p", "8080:80", "--publish=127.0.0.1::53/udp", "-P", "busybox"],
            {"ports": ["8080:80", "127.0.0.1::53/udp"], "publish_all": True},
        ),
        (
            ["--network", "web", "--network-alias", "db", "--net-alias=pg", "busybox"],
            {"network": "web", "network_aliases": ["db", "pg"]},
        ),
        (["--network", "web", "--ip", "10.89.0.10", "busybox"], {"ip": "10.89.0.10"}),
        (["--dns", "1.1.1.1", "--dns=9.9.9.9", "busybox"], {"dns": ["1.1.1.1", "9.9.9.9"]}),
        (
            ["--add-host", "db:10.0.0.5", "--add-host=gw:host-gateway", "busybox"],
            {"add_hosts": ["db:10.0.0.5", "gw:host-gateway"]},
        ),
        (["--add-host", "v6:::1", "busybox"], {"add_hosts": ["v6:::1"]}),
        (["--network", "container:web", "busybox"], {"network": "container:web"}),
        (["--network=default", "busybox"], {"network": "bridge"}),
    ],
)
def test_network_flags(argv: list[str], expected: dict[str, object]) -> None:
    run = _run(argv)
    for key, value in expected.items():
        assert getattr(run, key) == value, key


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-p", "80:80:80:80", "busybox"], "invalid port spec"),
        (["-p", "70000", "busybox"], "must be 1-65535"),
        (["-p", "8080:80", "-p", "8080:81", "busybox"], "published twice"),
        (["--network", "bridge", "--ip", "10.88.0.9", "busybox"], "user defined networks only"),
        (["--network", "web", "--ip", "nope", "busybox"], "invalid IP address"),
        (["--network", "bridge", "--network-alias", "a", "busybox"], "user defined networks"),
        (["--network", "container:web", "-p", "80", "busybox"], "port publishing"),
        (["--network", "container:web", "-h", "x", "busybox"], "hostname"),
        (["--network", "bad/name", "busybox"], "invalid network name"),
        (["--dns", "not-an-ip", "busybox"], "invalid DNS server address"),
        (["--add-host", "nocolon", "busybox"], "--add-host"),
        (["--add-host", "db:999.1.1.1", "busybox"], "IP address in --add-host"),
    ],
)
def test_network_flag_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _run(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["busybox"],
        ["-it", "--rm", "busybox", "ls", "-l", "-d"],
        ["-dit", "--name=web", "-p8080:80", "-p", "9090:90/udp", "busybox", "sleep", "1"],
        ["-e", "A=1", "-eB=2", "-e=C=3", "--env", "D", "-w", "/tmp", "-u", "1000:1000", "img"],
        ["--memory-swap", "-1", "-m", "64m", "--pids-limit", "-1", "--cpus", "1.5", "img"],
        ["--network", "host", "--isolation", "vm", "--pull", "never", "img", "--", "x"],
        ["-h", "myhost", "--entrypoint", "", "--restart", "on-failure:3", "img"],
        ["-v", "/a:/b:ro", "--mount", "type=tmpfs,target=/t", "--tmpfs", "/x", "img"],
        ["--", "img", "cmd"],
        ["--rm", "-", "cmd"],
    ],
)
def test_quick_parse_agrees_with_argparse(argv: list[str]) -> None:
    from hull.cli.run_flags import quick_parse

    quick = quick_parse(list(argv))
    assert quick is not None
    assert vars(quick) == vars(_parser().parse_args(list(argv)))


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no IMAGE
        ["--help"],
        ["--detac", "img"],  # an abbreviation: argparse decides
        ["--bogus", "img"],
        ["--isolation", "kvm", "img"],  # a bad choice
        ["--name"],  # a missing value
        ["-e", "--rm", "img"],  # a value that looks like a flag
        ["--rm=1", "img"],
        ["-iZ", "img"],
    ],
)
def test_quick_parse_leaves_odd_command_lines_to_argparse(argv: list[str]) -> None:
    from hull.cli.run_flags import quick_parse

    assert quick_parse(list(argv)) is None
