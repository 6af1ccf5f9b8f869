"""The `hull` binary end to end for image verbs, through a subprocess as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hull.paths import HullPaths

HULL = Path(sys.executable).parent / "hull"


@pytest.fixture
def hull(hull_paths: HullPaths):
    def run(
        *argv: str, ok: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(HULL), "--root", str(hull_paths.root), "--runroot", str(hull_paths.runroot)]
        proc = subprocess.run([*cmd, *argv], capture_output=True, text=True, input=stdin)
        if ok:
            assert proc.returncode == 0, f"{argv}: {proc.returncode}\n{proc.stderr}"
        return proc

    return run


def test_bootstrap_images_inspect_history(hull) -> None:
    boot = hull("image", "bootstrap", "busybox")
    image_id = boot.stdout.splitlines()[-1]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image_id)
    assert "busybox:latest" in boot.stdout

    listing = hull("images").stdout.splitlines()
    assert re.split(r"\s{2,}", listing[0]) == ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    assert re.split(r"\s{2,}", listing[1])[:3] == ["busybox", "latest", image_id[7:19]]
    assert listing[1].endswith("MB") and "years ago" in listing[1]

    assert hull("images", "-q").stdout == image_id[7:19] + "\n"
    (row,) = [json.loads(line) for line in hull("images", "--format", "json").stdout.splitlines()]
    assert (row["Repository"], row["Tag"], row["ID"]) == ("busybox", "latest", image_id[7:19])
    fmt = hull("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    assert fmt == "busybox:latest\n"

    (doc,) = json.loads(hull("inspect", "busybox").stdout)
    assert doc["Id"] == image_id and doc["Config"]["Cmd"] == ["sh"]
    assert hull("image", "inspect", "-f", "{{.Config.Cmd}}", "busybox").stdout == "[sh]\n"

    history = hull("history", "busybox").stdout.splitlines()
    assert history[0].split()[:2] == ["IMAGE", "CREATED"]
    assert history[1].startswith(image_id[7:19]) and "hull image bootstrap busybox" in history[1]


def test_tag_rmi_and_errors(hull) -> None:
    image_id = hull("image", "bootstrap", "busybox", "-q").stdout.strip()
    hull("tag", "busybox", "mine/bb:1")
    assert sorted(hull("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()) == [
        "busybox:latest",
        "mine/bb:1",
    ]
    assert hull("images", "mine/bb").stdout.count("\n") == 2  # header + the one row

    missing = hull("rmi", "nope", ok=False)
    assert missing.returncode == 1 and "hull: no such image: nope" in missing.stderr
    missing = hull("inspect", "nope", ok=False)  # containers first, then images: Docker's words
    assert missing.returncode == 1 and "no such object: nope" in missing.stderr
    missing = hull("image", "inspect", "nope", ok=False)
    assert missing.returncode == 1 and "no such image: nope" in missing.stderr

    refused = hull("rmi", image_id[7:19], ok=False)
    assert refused.returncode == 1 and "must be forced" in refused.stderr
    assert hull("rmi", "mine/bb:1").stdout == "Untagged: mine/bb:1\n"
    assert hull("rmi", "busybox").stdout.splitlines() == [
        "Untagged: busybox:latest",
        f"Deleted: {image_id}",
    ]
    assert hull("images", "-q").stdout == ""

    unknown = hull("frobnicate", ok=False)
    assert unknown.returncode == 125 and unknown.stderr.startswith("hull: unknown command")


def test_save_load_prune(hull, tmp_path: Path) -> None:
    image_id = hull("image", "bootstrap", "busybox", "-q").stdout.strip()
    archive = tmp_path / "bb.tar"
    hull("save", "-o", str(archive), "busybox")
    hull("rmi", "busybox")
    assert hull("load", "-i", str(archive)).stdout == "Loaded image: busybox:latest\n"
    assert hull("images", "-q", "--no-trunc").stdout == image_id + "\n"

    hull("tag", "busybox", "spare:1")
    hull("rmi", "busybox")
    prune = hull("image", "prune", "-a", "-f").stdout
    assert f"deleted: {image_id}" in prune
    assert re.search(r"Total reclaimed space: [0-9.]+MB", prune)
    assert hull("images", "-q").stdout == ""

    # stdout and stdin work too: `docker save busybox > f`, `docker load < f`.
    streamed = tmp_path / "streamed.tar"
    with open(streamed, "wb") as f:
        cmd = [str(HULL), "--root", os.environ["HULL_ROOT"], "save", "busybox"]
        assert subprocess.run(cmd, stdout=f).returncode == 125  # pruned: nothing to save
    hull("load", "-q", "-i", str(archive))
    with open(streamed, "wb") as f:
        assert subprocess.run(cmd, stdout=f).returncode == 0
    hull("rmi", "busybox")
    with open(streamed, "rb") as f:
        proc = subprocess.run(
            [str(HULL), "--root", os.environ["HULL_ROOT"], "load", "-q"],
            stdin=f,
            capture_output=True,
        )
    assert proc.returncode == 0, proc.stderr
    assert hull("images", "-q", "--no-trunc").stdout == image_id + "\n"


def test_push_pull_login_logout(hull, basic_registry, tmp_path: Path, monkeypatch) -> None:
    """Against a real registry on loopback (basic auth): login, push, rmi, pull, logout."""
    monkeypatch.setenv("HULL_CONFIG", str(tmp_path / "hull-config"))
    host = basic_registry.server.host
    ((user, password),) = basic_registry.users.items()
    image_id = hull("image", "bootstrap", "busybox", "-q").stdout.strip()
    ref = f"{host}/hull-test/bb:v1"
    hull("tag", "busybox", ref)

    denied = hull("push", "-q", ref, ok=False)
    assert denied.returncode == 125 and "hull login" in denied.stderr
    wrong = hull("login", "-u", user, "--password-stdin", host, stdin="wrong\n", ok=False)
    assert wrong.returncode == 125
    assert (
        not (tmp_path / "hull-config" / "config.json").exists()
        or host not in (tmp_path / "hull-config" / "config.json").read_text()
    )
    login = hull("login", "-u", user, "--password-stdin", host, stdin=password + "\n")
    assert login.stdout == "Login Succeeded\n"

    pushed = hull("push", "-q", ref).stdout
    digest = re.search(r"digest: (sha256:[0-9a-f]{64})", pushed)
    assert digest is not None
    hull("rmi", ref)
    hull("rmi", "busybox")
    assert hull("images", "-q").stdout == ""

    assert hull("pull", "-q", ref).stdout == ref + "\n"
    assert hull("images", "-q", "--no-trunc").stdout == image_id + "\n"
    (doc,) = json.loads(hull("inspect", ref).stdout)
    assert doc["RepoDigests"] == [f"{host}/hull-test/bb@{digest.group(1)}"]
    assert hull("image", "inspect", "-f", "{{.Config.Cmd}}", ref).stdout == "[sh]\n"

    assert hull("logout", host).stdout == f"Removing login credentials for {host}\n"
    assert hull("pull", "-q", ref, ok=False).returncode != 0
