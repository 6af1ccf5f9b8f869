"""The remaining Docker verbs end to end, as root, on a bootstrapped busybox image:
stats, top, port, cp, rename, update, attach, diff, commit, system df/prune, info,
version."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.integration.engine_helpers import (
    isolated_engine_session,
    overlay_mounts_under,
    wait_for,
)

MiB = 1 << 20


@pytest.fixture
def hull(hull_paths, monkeypatch):
    yield from isolated_engine_session(hull_paths, monkeypatch)


def test_stats_top_and_port(hull):
    hull.ok("run", "-d", "--name", "busy", "-m", "32m", "busybox", "sleep", "300")
    row = json.loads(hull.ok("stats", "--no-stream", "--format", "json", "busy"))
    used, limit = row["MemUsage"].split(" / ")
    assert limit == "32MiB"
    assert not used.startswith("0B")  # a sleeping process still holds memory
    assert row["Name"] == "busy" and row["PIDs"] == "1" and row["NetIO"] == "0B / 0B"
    assert float(row["MemPerc"].rstrip("%")) > 0
    table = hull.ok("stats", "--no-stream").splitlines()
    assert re.split(r" {3,}", table[0]) == [
        "CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %",
        "NET I/O", "BLOCK I/O", "PIDS",
    ]  # fmt: skip
    assert any(" busy " in line for line in table[1:])

    top = hull.ok("top", "busy").splitlines()
    assert top[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert len(top) == 2 and top[1].endswith("sleep 300")
    assert hull.ok("top", "busy", "-o", "pid,comm").split()[-1] == "sleep"

    assert hull.ok("port", "busy") == ""
    asked = hull("port", "busy", "80")
    assert asked.returncode == 1
    assert "no public port '80/tcp' published for busy" in asked.stderr
    assert hull("top", "nosuch").returncode != 0


def test_cp_both_ways_keeps_content_and_mode(hull, tmp_path):
    hull.ok("run", "-d", "--name", "box", "busybox", "sleep", "300")
    src = tmp_path / "script.sh"
    src.write_text("#!/bin/sh\necho hi\n")
    src.chmod(0o751)
    hull.ok("cp", str(src), "box:/tmp/")
    assert hull.ok("exec", "box", "stat", "-c", "%a %u", "/tmp/script.sh").split() == ["751", "0"]
    assert hull.ok("exec", "box", "/tmp/script.sh") == "hi\n"

    back = tmp_path / "back.sh"
    hull.ok("cp", "box:/tmp/script.sh", str(back))
    assert back.read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(back.stat().st_mode) == 0o751

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "leaf").write_text("leaf\n")
    (tree / "sub" / "link").symlink_to("leaf")
    hull.ok("cp", str(tree), "box:/copied")  # a missing destination takes the source's place
    assert hull.ok("exec", "box", "cat", "/copied/sub/leaf") == "leaf\n"
    assert hull.ok("exec", "box", "readlink", "/copied/sub/link") == "leaf\n"
    hull.ok("cp", str(tree), "box:/copied")  # an existing directory receives it inside
    assert hull.ok("exec", "box", "cat", "/copied/tree/sub/leaf") == "leaf\n"
    hull.ok("cp", f"{tree}/.", "box:/tmp")  # '/.' copies the contents
    assert hull.ok("exec", "box", "cat", "/tmp/sub/leaf") == "leaf\n"

    out = tmp_path / "out"
    hull.ok("cp", "box:/copied", str(out))
    assert (out / "sub" / "leaf").read_text() == "leaf\n"
    assert os.readlink(out / "sub" / "link") == "leaf"

    missing = hull("cp", "box:/no/such/file", str(tmp_path / "x"))
    assert missing.returncode != 0 and "could not find the file /no/such/file" in missing.stderr
    into_file = hull("cp", str(tree), "box:/tmp/script.sh")
    assert into_file.returncode != 0 and "cannot copy a directory to a file" in into_file.stderr

    archive = subprocess.run(hull.cmd("cp", "box:/tmp/script.sh", "-"), capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        assert tar.getnames() == ["script.sh"]


def test_cp_through_symlinks_stays_inside_the_rootfs(hull, tmp_path):
    host_dir = tmp_path / "host-side"
    host_dir.mkdir()
    marker = f"escape-{uuid.uuid4().hex}"
    script = f"ln -s / /escape; ln -s {host_dir} /hostlink; mkdir -p {host_dir}; sleep 300"
    hull.ok("run", "-d", "--name", "trap", "busybox", "sh", "-c", script)
    wait_for(lambda: hull("exec", "trap", "test", "-L", "/hostlink").returncode == 0)
    src = tmp_path / "payload"
    src.write_text("inside\n")

    hull.ok("cp", str(src), f"trap:/escape/tmp/{marker}")
    assert hull.ok("exec", "trap", "cat", f"/tmp/{marker}") == "inside\n"
    assert not os.path.exists(f"/tmp/{marker}")

    hull.ok("cp", str(src), f"trap:/hostlink/{marker}")
    assert hull.ok("exec", "trap", "cat", f"{host_dir}/{marker}") == "inside\n"
    assert list(host_dir.iterdir()) == []  # the host's directory of that name is untouched

    # A symlink in the container pointing at a host file is copied out as a symlink,
    # never as the host file's content.
    hull.ok("exec", "trap", "ln", "-s", "/etc/shadow", "/tmp/shadowlink")
    hull.ok("cp", "trap:/tmp/shadowlink", str(tmp_path / "got"))
    assert os.readlink(tmp_path / "got") == "/etc/shadow"
    followed = tmp_path / "followed"
    result = hull("cp", "-L", "trap:/tmp/shadowlink", str(followed))
    if result.returncode == 0:  # busybox's /etc has no shadow; if it had, it is the container's
        assert followed.read_bytes() != Path("/etc/shadow").read_bytes()


def test_cp_from_a_stopped_container_mounts_and_unmounts(hull, tmp_path):
    hull.ok("run", "--name", "done", "busybox", "sh", "-c", "echo result > /result")
    hull.ok("cp", "done:/result", str(tmp_path / "result"))
    assert (tmp_path / "result").read_text() == "result\n"
    assert overlay_mounts_under(hull.paths.root) == []
    (tmp_path / "extra").write_text("extra\n")
    hull.ok("cp", str(tmp_path / "extra"), "done:/extra")
    hull.ok("start", "-a", "done")  # reruns its command: the copied file is still there
    hull.ok("cp", "done:/extra", str(tmp_path / "extra-back"))
    assert (tmp_path / "extra-back").read_text() == "extra\n"


def test_rename_and_update_persist(hull):
    hull.ok("run", "-d", "--name", "before", "-m", "32m", "busybox", "sleep", "300")
    hull.ok("run", "-d", "--name", "taken", "busybox", "sleep", "300")
    hull.ok("rename", "before", "after")
    doc = json.loads(hull.ok("inspect", "after"))[0]
    assert doc["Name"] == "/after"
    assert hull("inspect", "before").returncode != 0
    clash = hull("rename", "after", "taken")
    assert clash.returncode != 0 and "already in use" in clash.stderr
    assert hull("rename", "after", "bad/name").returncode != 0

    limit = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    assert hull.ok("exec", "after", "cat", limit).strip() == str(32 * MiB)
    assert hull.ok("update", "--memory", "48m", "--pids-limit", "20", "after").strip() == "after"
    assert hull.ok("exec", "after", "cat", limit).strip() == str(48 * MiB)
    assert hull.ok("exec", "after", "cat", "/sys/fs/cgroup/pids/pids.max").strip() == "20"
    hull.ok("stop", "-t", "0", "after")
    hull.ok("start", "after")
    assert hull.ok("exec", "after", "cat", limit).strip() == str(48 * MiB)
    doc = json.loads(hull.ok("inspect", "after"))[0]
    assert doc["HostConfig"]["Memory"] == 48 * MiB and doc["HostConfig"]["PidsLimit"] == 20
    too_big = hull("update", "--memory", "1g", "--memory-swap", "64m", "after")
    assert too_big.returncode != 0 and "memoryswap" in too_big.stderr


def test_attach_sees_new_output_and_returns_the_exit_code(hull):
    script = "i=0; while [ $i -lt 30 ]; do echo tick$i; i=$((i+1)); sleep 0.1; done; exit 7"
    hull.ok("run", "-d", "--name", "talker", "busybox", "sh", "-c", script)
    result = hull("attach", "talker", timeout=30)
    assert result.returncode == 7
    assert result.stdout.split()[-1] == "tick29"
    assert hull("attach", "talker").returncode != 0  # it has stopped


def test_diff_and_commit_make_a_runnable_image(hull):
    hull.ok("run", "--name", "maker", "busybox", "sh", "-c",
            "echo made > /made; rm /etc/group; echo extra >> /etc/passwd")  # fmt: skip
    changes = hull.ok("diff", "maker").splitlines()
    for line in ("C /etc", "D /etc/group", "C /etc/passwd", "A /made"):
        assert line in changes
    assert "A /etc/hostname" not in changes  # mount points are not the user's changes

    image_id = hull.ok(
        "commit", "-m", "made a file", "-a", "tester", "-c", 'CMD ["cat", "/made"]',
        "-c", "ENV GREETING=hello", "maker", "made:v1",
    ).strip()  # fmt: skip
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image_id)
    assert hull.ok("run", "--rm", "made:v1") == "made\n"
    assert hull.ok("run", "--rm", "made:v1", "cat", "/made") == "made\n"
    assert hull.ok("run", "--rm", "made:v1", "sh", "-c", "echo $GREETING") == "hello\n"
    assert hull("run", "--rm", "made:v1", "cat", "/etc/group").returncode != 0
    doc = json.loads(hull.ok("image", "inspect", "made:v1"))[0]
    assert doc["Id"] == image_id and doc["Comment"] == "made a file" and doc["Author"] == "tester"
    assert doc["Config"]["Cmd"] == ["cat", "/made"]
    base = json.loads(hull.ok("image", "inspect", "busybox"))[0]
    assert doc["RootFS"]["Layers"][:-1] == base["RootFS"]["Layers"]
    assert len(doc["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1


def test_commit_of_a_running_container_pauses_it_and_lets_it_run_on(hull):
    hull.ok("run", "-d", "--name", "live", "busybox", "sh", "-c", "echo live > /live; sleep 300")
    wait_for(lambda: hull("exec", "live", "test", "-f", "/live").returncode == 0)
    image_id = hull.ok("commit", "live").strip()
    assert hull.ok("run", "--rm", image_id[7:19], "cat", "/live") == "live\n"
    assert json.loads(hull.ok("inspect", "live"))[0]["State"]["Status"] == "running"


def test_system_df_prune_info_and_version(hull):
    keep = hull.ok("run", "-d", "--name", "keep", "busybox", "sleep", "300").strip()
    hull.ok("run", "--name", "gone", "busybox", "sh", "-c", "echo data > /data")
    gone = json.loads(hull.ok("inspect", "gone"))[0]["Id"]
    rows = {
        r["Type"]: r
        for r in map(json.loads, hull.ok("system", "df", "--format", "json").splitlines())
    }
    assert (rows["Images"]["TotalCount"], rows["Images"]["Active"]) == ("1", "1")
    assert (rows["Containers"]["TotalCount"], rows["Containers"]["Active"]) == ("2", "1")
    assert rows["Containers"]["Size"] != "0B"  # gone's /data
    assert rows["Build Cache"]["TotalCount"] == "0"
    assert hull.ok("system", "df").splitlines()[0].split() == [
        "TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"
    ]  # fmt: skip

    info = json.loads(hull.ok("info", "--format", "json"))
    assert (info["Containers"], info["ContainersRunning"], info["ContainersStopped"]) == (2, 1, 1)
    assert info["Images"] == 1 and info["CgroupDriver"] == "cgroupfs"
    assert info["DockerRootDir"] == str(hull.paths.root)
    text = hull.ok("info")
    assert " Containers: 2\n  Running: 1\n" in text and "Storage Driver: overlay" in text
    assert hull.ok("info", "--format", "{{.ContainersRunning}}").strip() == "1"

    declined = hull("system", "prune")  # no "y" on stdin: nothing happens
    assert declined.returncode == 0 and "WARNING!" in declined.stderr
    assert gone in hull.ok("ps", "-aq", "--no-trunc")

    pruned = hull.ok("system", "prune", "-f")
    assert gone in pruned and keep not in pruned and "Total reclaimed space" in pruned
    assert hull.ok("ps", "-aq", "--no-trunc").split() == [keep]
    assert hull.ok("images", "-q") != ""  # busybox is in use: kept

    version = json.loads(hull.ok("version", "--format", "json"))
    assert version["Client"]["ApiVersion"] == "1.43" and version["Server"]["Os"] == "linux"
    assert hull.ok("version").startswith("Client:\n")


def test_cp_from_stdin_tar(hull, tmp_path):
    hull.ok("run", "-d", "--name", "sink", "busybox", "sleep", "300")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"streamed\n"
        info = tarfile.TarInfo("in/streamed.txt")
        info.size, info.mode = len(data), 0o640
        tar.addfile(info, io.BytesIO(data))
    proc = subprocess.run(hull.cmd("cp", "-", "sink:/tmp"), input=buf.getvalue(),
                          capture_output=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert hull.ok("exec", "sink", "stat", "-c", "%a", "/tmp/in/streamed.txt").strip() == "640"
    bad = tarfile.TarInfo("../../outside")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(bad, io.BytesIO(b""))
    proc = subprocess.run(hull.cmd("cp", "-", "sink:/tmp"), input=buf.getvalue(),
                          capture_output=True, timeout=60)  # fmt: skip
    assert proc.returncode != 0 and b"outside the destination" in proc.stderr
