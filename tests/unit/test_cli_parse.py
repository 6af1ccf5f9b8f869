"""`hull` argument parsing and output formatting: no root, no state touched."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from hull.cli import containers as container_verbs
from hull.cli import images as image_verbs
from hull.cli import output
from hull.cli.main import GROUPS, VERBS, UsageError, main, parse


def _parsed(argv: list[str]) -> tuple[argparse.Namespace, object]:
    result = parse(argv)
    assert not isinstance(result, str), result
    return result


@pytest.mark.parametrize(
    ("argv", "function", "expected"),
    [
        (["images"], image_verbs.images, {"quiet": False, "all": False, "format": None}),
        (["images", "-q", "-a"], image_verbs.images, {"quiet": True, "all": True}),
        (["image", "ls", "--format", "json"], image_verbs.images, {"format": "json"}),
        (["image", "list", "busybox"], image_verbs.images, {"repository": "busybox"}),
        (
            ["pull", "--platform", "linux/arm64", "-q", "x"],
            image_verbs.pull,
            {"platform": "linux/arm64", "quiet": True, "name": "x"},
        ),
        (["image", "pull", "busybox"], image_verbs.pull, {"name": "busybox", "platform": None}),
        (["push", "localhost:5000/a:b"], image_verbs.push, {"name": "localhost:5000/a:b"}),
        (
            ["tag", "busybox", "me/bb:1"],
            image_verbs.tag,
            {"source": "busybox", "target": "me/bb:1"},
        ),
        (["rmi", "-f", "a", "b"], image_verbs.rmi, {"force": True, "names": ["a", "b"]}),
        (["image", "rm", "a"], image_verbs.rmi, {"force": False, "names": ["a"]}),
        (["image", "prune", "-a", "-f"], image_verbs.image_prune, {"all": True, "force": True}),
        (["load", "-i", "x.tar", "-q"], image_verbs.load, {"input": "x.tar", "quiet": True}),
        (
            ["save", "-o", "o.tar", "a", "b"],
            image_verbs.save,
            {"output": "o.tar", "format": "docker", "names": ["a", "b"]},
        ),
        (["save", "--format", "oci", "-o", "d", "a"], image_verbs.save, {"format": "oci"}),
        (["inspect", "a", "b"], container_verbs.inspect, {"names": ["a", "b"], "format": None}),
        (
            ["image", "inspect", "-f", "{{.Id}}", "a"],
            image_verbs.image_inspect,
            {"format": "{{.Id}}"},
        ),
        (
            ["login", "-u", "me", "--password-stdin", "reg:5000"],
            image_verbs.login,
            {"username": "me", "password_stdin": True, "server": "reg:5000"},
        ),
        (["logout"], image_verbs.logout, {"server": "docker.io"}),
        (
            ["image", "bootstrap", "busybox"],
            image_verbs.image_bootstrap,
            {"kind": "busybox", "tag": None},
        ),
        (
            ["image", "bootstrap", "debian:bookworm", "--tag", "deb:12"],
            image_verbs.image_bootstrap,
            {"kind": "debian:bookworm", "tag": "deb:12"},
        ),
        (
            ["image", "history", "--no-trunc", "busybox"],
            image_verbs.history,
            {"name": "busybox", "no_trunc": True},
        ),
        (["history", "busybox"], image_verbs.history, {"name": "busybox"}),
    ],
)
def test_verbs_and_flags(argv: list[str], function: object, expected: dict[str, object]) -> None:
    args, found = _parsed(argv)
    assert found is function
    for key, value in expected.items():
        assert getattr(args, key) == value, key


def test_roots_come_from_flags_else_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HULL_ROOT", "/env/root")
    monkeypatch.setenv("HULL_RUNROOT", "/env/run")
    args, _ = _parsed(["images"])
    assert (args.paths.root, args.paths.runroot) == ("/env/root", "/env/run")
    args, _ = _parsed(["--root", "/r", "--runroot", "/rr", "--debug", "images"])
    assert (args.paths.root, args.paths.runroot, args.debug) == ("/r", "/rr", True)


def test_help_and_bare_groups_are_text() -> None:
    top = parse([])
    assert isinstance(top, str) and "image" in top and "pull" in top
    group = parse(["image"])
    assert isinstance(group, str) and "bootstrap" in group and "prune" in group
    assert "connect" in str(parse(["network"]))
    assert "prune" in str(parse(["volume"]))


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["image", "frobnicate"],
        ["images", "--bogus"],
        ["rmi"],
        ["save", "--format", "zip", "a"],
    ],
)
def test_usage_errors_are_125(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError):
        parse(argv)
    assert main(argv) == 125
    assert capsys.readouterr().err.startswith("hull: ")


def test_every_table_entry_names_a_real_function() -> None:
    import importlib

    verbs = list(VERBS.values()) + [v for g in GROUPS.values() for v in g.verbs.values()]
    for verb in verbs:
        module, _, name = verb.target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), verb.target


def test_imports_are_lazy() -> None:
    """Parsing one verb imports only its own module, never the engine."""
    code = (
        "import sys; from hull.cli.main import parse\n"
        "parse([])\n"
        "assert 'hull.cli.images' not in sys.modules\n"
        "parse(['images'])\n"
        "assert 'hull.cli.images' in sys.modules\n"
        "heavy = [m for m in ('hull.engine.images', 'hull.image.store', 'sqlite3', 'httpx', 'rich')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ output


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (999, "999B"),
        (1000, "1kB"),
        (1240, "1.24kB"),
        (4_260_000, "4.26MB"),
        (77_900_000, "77.9MB"),
        (1_985_581, "1.99MB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert output.human_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "Less than a second"),
        (1, "1 second"),
        (42, "42 seconds"),
        (61, "About a minute"),
        (600, "10 minutes"),
        (3600, "About an hour"),
        (7200, "2 hours"),
        (3 * 86400, "3 days"),
        (21 * 86400, "3 weeks"),
        (90 * 86400, "3 months"),
        (3 * 365 * 86400, "3 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert output.human_duration(seconds) == text


def test_templates() -> None:
    doc = {"Id": "sha256:x", "Config": {"Cmd": ["sh", "-c"], "Env": None}, "Size": 3}
    assert output.render_template("{{.Config.Cmd}}", doc) == "[sh -c]"
    assert output.render_template("{{json .Config.Cmd}}", doc) == '["sh", "-c"]'
    assert output.render_template("{{.Id}}\\t{{ .Size }}", doc) == "sha256:x\t3"
    with pytest.raises(Exception, match="unsupported"):
        output.render_template("{{range .X}}{{end}}", doc)


def test_table_padding_and_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"A": "x", "B": "long value"}, {"A": "yyyy", "B": "z"}]
    output.print_formatted(None, rows, ["COL A", "B"], ["A", "B"])
    assert capsys.readouterr().out.splitlines() == [
        "COL A   B",
        "x       long value",
        "yyyy    z",
    ]
    output.print_formatted("json", rows, ["COL A", "B"], ["A", "B"])
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == rows
    output.print_formatted("table {{.A}}", rows, [], [])
    assert capsys.readouterr().out.splitlines() == ["A", "x", "yyyy"]


def test_tls_verify_flag() -> None:
    for verb in ("pull", "push"):
        parsed = parse([verb, "--tls-verify=false", "x"])
        assert not isinstance(parsed, str)
        assert parsed[0].tls_verify is False
        parsed = parse([verb, "x"])
        assert not isinstance(parsed, str) and parsed[0].tls_verify is True
    with pytest.raises(UsageError):
        parse(["pull", "--tls-verify=maybe", "x"])
