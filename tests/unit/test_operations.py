"""Pure parts of hull.engine.operations and hull.cli.system: stats arithmetic, ps
parsing, Docker's cp path rules, update checks, commit --change, df and prune text."""

from __future__ import annotations

import pytest

from hull.cli import system
from hull.engine import operations as ops
from hull.engine.runconfig import MountSpec, RestartPolicy, RunConfig
from hull.errors import ConfigError, NotFoundError
from hull.image.snapshots import Change

MiB = 1 << 20


# ------------------------------------------------------------------ stats


def test_cpu_percent_scales_by_online_cpus_like_docker():
    # 0.5 s of container CPU over 2 s of host CPU time (1 s wall on 2 CPUs): 50%
    assert ops.cpu_percent(0, 500_000_000, 0, 2_000_000_000, 2) == pytest.approx(50.0)
    # two busy CPUs read 200%
    assert ops.cpu_percent(0, 2_000_000_000, 0, 2_000_000_000, 2) == pytest.approx(200.0)
    assert ops.cpu_percent(10, 10, 0, 100, 2) == 0.0
    assert ops.cpu_percent(0, 10, 100, 100, 2) == 0.0


def test_memory_in_use_leaves_out_inactive_file_cache():
    assert ops.memory_in_use(1000, {"total_inactive_file": 300}) == 700  # cgroup v1
    assert ops.memory_in_use(1000, {"inactive_file": 200}) == 800  # cgroup v2
    assert ops.memory_in_use(1000, {"total_inactive_file": 5000}) == 1000
    assert ops.memory_in_use(1000, {}) == 1000


def test_bytes_size_is_go_units_binary():
    assert ops.bytes_size(0) == "0B"
    assert ops.bytes_size(1536) == "1.5KiB"
    assert ops.bytes_size(32 * MiB) == "32MiB"
    assert ops.bytes_size(int(7.772 * (1 << 30))) == "7.772GiB"


def test_proc_stat_cpu_sums_the_first_seven_fields_in_ns():
    text = "cpu  100 0 50 800 50 0 0 7 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n"
    assert ops.parse_proc_stat_cpu(text, 100) == 1000 * 10_000_000


def test_block_io_parsers():
    v1 = "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 10\n8:16 Read 4\nTotal 4612\n"
    assert ops.parse_blkio_v1(v1) == (4100, 512)
    v2 = "8:0 rbytes=100 wbytes=20 rios=1 wios=1\n259:0 rbytes=5 wbytes=0\n"
    assert ops.parse_io_stat_v2(v2) == (105, 20)


def test_stats_row_uses_host_memory_when_the_container_has_no_limit():
    before = ops.StatsSample("a" * 64, "web", True, cpu_ns=0, system_ns=0, online_cpus=2)
    after = ops.StatsSample(
        "a" * 64,
        "web",
        True,
        cpu_ns=1_000_000_000,
        system_ns=4_000_000_000,
        online_cpus=2,
        mem_used=8 * MiB,
        mem_limit=None,
        pids=3,
        block_read=1000,
        block_write=0,
    )
    row = ops.stats_row(before, after, 64 * MiB)
    assert row["ID"] == "a" * 12 and row["Name"] == "web"
    assert row["CPUPerc"] == "50.00%"
    assert row["MemUsage"] == "8MiB / 64MiB" and row["MemPerc"] == "12.50%"
    assert row["NetIO"] == "0B / 0B" and row["BlockIO"] == "1kB / 0B" and row["PIDs"] == "3"
    after.mem_limit = 16 * MiB
    assert ops.stats_row(None, after, 64 * MiB)["MemUsage"] == "8MiB / 16MiB"
    assert ops.stats_row(None, after, 64 * MiB)["CPUPerc"] == "0.00%"


def test_stats_row_of_a_stopped_container_is_zeros():
    row = ops.stats_row(None, ops.StatsSample("b" * 64, "idle", False), 64 * MiB)
    assert row["CPUPerc"] == "0.00%" and row["MemUsage"] == "0B / 0B" and row["PIDs"] == "0"


# ------------------------------------------------------------------ top

PS = """UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 10:00 ?        00:00:01 /sbin/init splash
root         500       1  0 10:01 ?        00:00:00 sleep 100
root         501     500  0 10:01 pts/0    00:00:00 sh -c echo a  b
"""


def test_parse_ps_output_keeps_only_the_containers_pids():
    titles, rows = ops.parse_ps_output(PS, {500, 501})
    assert titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert [r[1] for r in rows] == ["500", "501"]
    assert rows[0][-1] == "sleep 100"
    assert rows[1][-1] == "sh -c echo a b"  # fields past the last title joined back


def test_parse_ps_output_needs_a_pid_column():
    with pytest.raises(ConfigError, match="PID"):
        ops.parse_ps_output("USER COMMAND\nroot init\n", {1})


# ------------------------------------------------------------------ cp rules


def test_parse_cp_arg_follows_dockers_split():
    assert ops.parse_cp_arg("web:/etc/hosts") == ops.CopyEndpoint("web", "/etc/hosts")
    assert ops.parse_cp_arg("/abs/with:colon") == ops.CopyEndpoint(None, "/abs/with:colon")
    assert ops.parse_cp_arg("./rel:colon") == ops.CopyEndpoint(None, "./rel:colon")
    assert ops.parse_cp_arg("plain") == ops.CopyEndpoint(None, "plain")
    assert ops.parse_cp_arg("web:") == ops.CopyEndpoint("web", "")


def test_split_path_dir_entry_keeps_dot():
    assert ops.split_path_dir_entry("/a/b") == ("/a", "b")
    assert ops.split_path_dir_entry("/a/b/") == ("/a", "b")
    assert ops.split_path_dir_entry("/a/b/.") == ("/a/b", ".")
    assert ops.split_path_dir_entry("/") == ("/", ".")
    assert ops.split_path_dir_entry("b") == (".", "b")


def test_plan_copy_into_an_existing_directory():
    assert ops.plan_copy("/src/f", False, "/dst", True, True) == ops.CopyPlan("/dst", None)
    assert ops.plan_copy("/src/d/.", True, "/dst/", True, True) == ops.CopyPlan("/dst/", None)


def test_plan_copy_renames_onto_a_missing_or_file_destination():
    assert ops.plan_copy("/src/f", False, "/dst/g", False, False) == ops.CopyPlan(
        "/dst", ("f", "g")
    )
    assert ops.plan_copy("/src/f", False, "/dst/g", True, False) == ops.CopyPlan("/dst", ("f", "g"))
    assert ops.plan_copy("/src/d", True, "/dst/new", False, False) == ops.CopyPlan(
        "/dst", ("d", "new")
    )
    assert ops.plan_copy("/src/d/.", True, "/dst/new", False, False) == ops.CopyPlan(
        "/dst", (".", "new")
    )


def test_plan_copy_errors():
    with pytest.raises(ConfigError, match="cannot copy a directory to a file"):
        ops.plan_copy("/src/d", True, "/dst/file", True, False)
    with pytest.raises(NotFoundError, match="does not exist"):
        ops.plan_copy("/src/f", False, "/dst/missing/", False, False)


def test_rebase_name():
    assert ops.rebase_name("f", ("f", "g")) == "g"
    assert ops.rebase_name("d/x/y", ("d", "new")) == "new/x/y"
    assert ops.rebase_name("d/", ("d", "new")) == "new"
    assert ops.rebase_name(".", (".", "new")) == "new"
    assert ops.rebase_name("x", (".", "new")) == "new/x"
    assert ops.rebase_name("./x", (".", "new")) == "new/x"
    assert ops.rebase_name("other", ("d", "new")) == "other"
    assert ops.rebase_name("d/x", None) == "d/x"


def test_entry_parts_refuses_dot_dot():
    assert ops.entry_parts("./a//b/") == ["a", "b"]
    assert ops.entry_parts("/abs/x") == ["abs", "x"]
    assert ops.entry_parts(".") == []
    with pytest.raises(ConfigError, match="outside"):
        ops.entry_parts("a/../../etc/passwd")


# ------------------------------------------------------------------ update


def test_apply_update_keeps_what_is_not_asked():
    run = RunConfig(image="busybox", memory=64 * MiB, cpus=1.0, pids_limit=10)
    updated = ops.apply_update(run, ops.ResourceUpdate(memory=32 * MiB))
    assert updated.memory == 32 * MiB and updated.cpus == 1.0 and updated.pids_limit == 10
    assert run.memory == 64 * MiB  # the original is untouched
    policy = ops.apply_update(run, ops.ResourceUpdate(restart=RestartPolicy("always")))
    assert policy.restart.name == "always"


def test_apply_update_checks_like_dockers_daemon():
    run = RunConfig(image="busybox", memory=64 * MiB, memory_swap=128 * MiB)
    with pytest.raises(ConfigError, match="smaller than already set memoryswap"):
        ops.apply_update(run, ops.ResourceUpdate(memory=256 * MiB))
    with pytest.raises(ConfigError, match="minimum memory"):
        ops.apply_update(run, ops.ResourceUpdate(memory=1 * MiB))
    with pytest.raises(ConfigError, match="larger than memory"):
        ops.apply_update(run, ops.ResourceUpdate(memory_swap=32 * MiB))
    with pytest.raises(ConfigError, match="memory limit"):
        ops.apply_update(RunConfig(image="b"), ops.ResourceUpdate(memory_swap=32 * MiB))
    with pytest.raises(ConfigError, match="AutoRemove"):
        ops.apply_update(
            RunConfig(image="b", rm=True), ops.ResourceUpdate(restart=RestartPolicy("always"))
        )
    both = ops.apply_update(run, ops.ResourceUpdate(memory=256 * MiB, memory_swap=512 * MiB))
    assert (both.memory, both.memory_swap) == (256 * MiB, 512 * MiB)


def test_live_resources_cover_only_what_changed():
    change = ops.ResourceUpdate(memory=32 * MiB, pids_limit=-1)
    run = ops.apply_update(RunConfig(image="b", cpus=2.0), change)
    assert ops.live_resources(run, change) == {
        "memory": {"limit": 32 * MiB, "swap": 64 * MiB},
        "pids": {"limit": -1},
    }
    change = ops.ResourceUpdate(cpus=0.5, cpu_shares=512, cpuset_cpus="0")
    run = ops.apply_update(RunConfig(image="b"), change)
    assert ops.live_resources(run, change) == {
        "cpu": {"quota": 50_000, "period": 100_000, "shares": 512, "cpus": "0"}
    }


# ------------------------------------------------------------------ diff


def test_hide_mount_points_drops_them_and_parents_changed_only_for_them():
    changes = [
        Change("C", "/etc"),
        Change("A", "/etc/hostname"),
        Change("A", "/etc/hosts"),
        Change("C", "/tmp"),
        Change("A", "/tmp/x"),
        Change("A", "/data"),
    ]
    targets = ops.mount_targets(RunConfig(image="b", mounts=[MountSpec("volume", "v", "/data")]))
    assert ops.hide_mount_points(changes, targets) == [Change("C", "/tmp"), Change("A", "/tmp/x")]
    real = [Change("C", "/etc"), Change("A", "/etc/hostname"), Change("C", "/etc/passwd")]
    assert ops.hide_mount_points(real, targets) == [Change("C", "/etc"), Change("C", "/etc/passwd")]


# ------------------------------------------------------------------ commit


def test_apply_changes_dockerfile_instructions():
    base = {"Env": ["PATH=/bin", "A=0"], "Cmd": ["sh"], "WorkingDir": "/app"}
    out = ops.apply_changes(
        base,
        [
            'CMD ["cat", "/file"]',
            "ENTRYPOINT echo hi",
            "ENV A=1 B='two words'",
            "ENV C the rest of it",
            "LABEL k=v other=x",
            "EXPOSE 80 53/udp 8000-8001",
            "WORKDIR sub",
            "USER nobody",
            'VOLUME ["/data"]',
            "STOPSIGNAL SIGINT",
        ],
    )
    assert out["Cmd"] == ["cat", "/file"]
    assert out["Entrypoint"] == ["/bin/sh", "-c", "echo hi"]
    assert out["Env"] == ["PATH=/bin", "A=1", "B=two words", "C=the rest of it"]
    assert out["Labels"] == {"k": "v", "other": "x"}
    assert set(out["ExposedPorts"]) == {"80/tcp", "53/udp", "8000/tcp", "8001/tcp"}
    assert out["WorkingDir"] == "/app/sub" and out["User"] == "nobody"
    assert out["Volumes"] == {"/data": {}} and out["StopSignal"] == "SIGINT"
    assert base["Cmd"] == ["sh"]  # a copy was changed


def test_apply_changes_refuses_unknown_or_malformed():
    with pytest.raises(ConfigError, match="not a valid change command"):
        ops.apply_changes({}, ["RUN echo"])
    with pytest.raises(ConfigError, match="requires at least one argument"):
        ops.apply_changes({}, ["CMD"])
    with pytest.raises(ConfigError, match="EXPOSE"):
        ops.apply_changes({}, ["EXPOSE eighty"])


def test_container_config_merges_what_the_container_ran_with():
    image = {"Env": ["PATH=/bin", "A=0"], "Cmd": ["sh"], "Labels": {"a": "1"}}
    run = RunConfig(
        image="b",
        command=["sleep", "1"],
        env=["A=1", "B=2"],
        workdir="/w",
        user="nobody",
        labels={"b": "2"},
    )
    out = ops.container_config(image, run)
    assert out["Env"] == ["PATH=/bin", "A=1", "B=2"]
    assert out["Cmd"] == ["sleep", "1"] and out["WorkingDir"] == "/w" and out["User"] == "nobody"
    assert out["Labels"] == {"a": "1", "b": "2"}
    only_entrypoint = ops.container_config(image, RunConfig(image="b", entrypoint=["top"]))
    assert only_entrypoint["Entrypoint"] == ["top"] and "Cmd" not in only_entrypoint


# ------------------------------------------------------------------ system text


def test_df_row_shows_the_reclaimable_share():
    row = system.df_row(ops.UsageRow("Images", 3, 1, 4_000_000, 1_000_000))
    assert row == {
        "Type": "Images",
        "TotalCount": "3",
        "Active": "1",
        "Size": "4MB",
        "Reclaimable": "1MB (25%)",
    }
    assert system.df_row(ops.UsageRow("Build Cache", 0, 0, 0, 0))["Reclaimable"] == "0B"


def test_prune_text_lists_what_went():
    report = ops.PruneReport(
        containers=["c" * 64],
        images=[{"Untagged": "x:latest"}, {"Deleted": "sha256:" + "d" * 64}],
        reclaimed=2_000,
    )
    text = system.prune_text(report)
    assert text.startswith("Deleted Containers:\n" + "c" * 64 + "\n\nDeleted Images:\n")
    assert "untagged: x:latest\ndeleted: sha256:" in text
    assert text.endswith("Total reclaimed space: 2kB\n")
    assert system.prune_text(ops.PruneReport()) == "Total reclaimed space: 0B\n"
    assert "all anonymous volumes" in system.prune_warning(False, True)
    assert "all images without" in system.prune_warning(True, False)


def test_version_text_has_client_and_server():
    text = system.version_text(ops.version_info())
    assert text.startswith("Client:\n Version:")
    assert "Python version:" in text and "\nServer:\n Engine:\n" in text
    assert "API version:      1.43" in text
