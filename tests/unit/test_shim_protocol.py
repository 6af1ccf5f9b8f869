"""hull.engine.shim without a shim: attach framing, log times, json-file reading, flags."""

from __future__ import annotations

import datetime
import json
import os
import random
import re
from pathlib import Path

import pytest

from hull.engine.shim import (
    FrameDecoder,
    ShimOptions,
    _days_from_civil,
    encode_frame,
    exit_error,
    log_files,
    parse_log_time,
    read_exit,
    read_log,
    shim_alive,
    shim_binary,
)
from hull.errors import HullError

# ---- attach frames -------------------------------------------------------------------


def test_encode_frame_uses_dockers_8_byte_header() -> None:
    assert encode_frame(2, b"hi") == b"\x02\x00\x00\x00\x00\x00\x00\x02hi"
    assert encode_frame(0, b"") == b"\x00" * 8
    assert encode_frame(1, b"x" * 70000)[:8] == b"\x01\x00\x00\x00\x00\x01\x11\x70"


def test_decoder_reassembles_frames_whatever_the_chunking() -> None:
    frames = [(1, b"hello\n"), (2, b""), (1, b"x" * 5000), (2, b"err\n"), (3, b"\x00\x18\x00\x50")]
    wire = b"".join(encode_frame(s, p) for s, p in frames)
    rng = random.Random(7)
    for _ in range(50):
        decoder = FrameDecoder()
        got: list[tuple[int, bytes]] = []
        pos = 0
        while pos < len(wire):
            step = rng.randint(1, 700)
            got += decoder.feed(wire[pos : pos + step])
            pos += step
        assert got == frames
        assert decoder.pending == 0


def test_decoder_holds_back_an_incomplete_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(1, b"abc")[:-1]) == []
    assert decoder.pending == 10
    assert decoder.feed(b"c") == [(1, b"abc")]


# ---- times ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T20:31:02.123456789Z",
        "2026-11-26T20:31:02Z",
        "2026-11-26T20:31:02.5Z",
        "1970-01-01T00:00:00Z",
        "2000-02-29T23:59:59.000001Z",
        "2026-11-26T20:31:02.25+02:00",
        "2026-11-26T20:31:02-05:30",
    ],
)
def test_parse_log_time_agrees_with_datetime(text: str) -> None:
    # datetime takes at most 6 fraction digits
    match = re.fullmatch(r"(.{19})(?:\.(\d+))?(.*)", text)
    assert match is not None
    head, digits, zone = match.groups()
    iso = head + ("." + digits[:6].ljust(6, "0") if digits else "") + zone
    expected = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    assert parse_log_time(text) == pytest.approx(expected, abs=1e-6)


def test_parse_log_time_keeps_nanoseconds_apart() -> None:
    a = parse_log_time("2026-11-26T20:31:02.000000100Z")
    b = parse_log_time("2026-11-26T20:31:02.000000900Z")
    assert a < b


@pytest.mark.parametrize("bad", ["", "yesterday", "2026-11-26 20:31:02", "2026-11-26T20:31:02"])
def test_parse_log_time_rejects_other_formats(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_log_time(bad)


def test_days_from_civil_matches_the_proleptic_calendar() -> None:
    epoch = datetime.date(1970, 1, 1).toordinal()
    day = datetime.date(1600, 1, 1)
    while day.year < 2500:
        assert _days_from_civil(day.year, day.month, day.day) == day.toordinal() - epoch
        day += datetime.timedelta(days=13)


# ---- json-file logs -------------------------------------------------------------------


def entry(line: str, stream: str = "stdout", second: int = 0) -> str:
    stamp = f"2026-01-01T00:00:{second:02d}.5Z"
    return json.dumps({"log": line, "stream": stream, "time": stamp}) + "\n"


def write_log(path: Path, entries: list[str]) -> None:
    path.write_text("".join(entries))


@pytest.fixture
def rotated_log(tmp_path: Path) -> Path:
    """log.2 (oldest) <- log.1 <- log: lines 0..8, one second apart."""
    log = tmp_path / "c-json.log"
    write_log(Path(f"{log}.2"), [entry(f"l{i}\n", second=i) for i in range(0, 3)])
    write_log(Path(f"{log}.1"), [entry(f"l{i}\n", second=i) for i in range(3, 6)])
    write_log(log, [entry(f"l{i}\n", "stderr" if i == 7 else "stdout", i) for i in range(6, 9)])
    return log


def lines_of(log: Path, **kw) -> list[str]:
    return [line for _, line, _ in read_log(str(log), **kw)]


def test_log_files_lists_rotations_oldest_first(rotated_log: Path) -> None:
    assert log_files(str(rotated_log)) == [f"{rotated_log}.2", f"{rotated_log}.1", str(rotated_log)]


def test_read_log_reads_rotations_in_order_with_streams(rotated_log: Path) -> None:
    got = list(read_log(str(rotated_log)))
    assert [line for _, line, _ in got] == [f"l{i}\n" for i in range(9)]
    assert [stream for stream, _, _ in got].count("stderr") == 1
    assert got[7] == ("stderr", "l7\n", "2026-01-01T00:00:07.5Z")


@pytest.mark.parametrize("tail", [0, 1, 2, 3, 4, 7, 9, 50])
def test_tail_counts_across_rotated_files(rotated_log: Path, tail: int) -> None:
    expected = [f"l{i}\n" for i in range(9)][max(0, 9 - tail) :] if tail else []
    assert lines_of(rotated_log, tail=tail) == expected


def test_since_and_until_are_inclusive(rotated_log: Path) -> None:
    base = parse_log_time("2026-01-01T00:00:00Z")
    assert lines_of(rotated_log, since=base + 4.5, until=base + 6.5) == ["l4\n", "l5\n", "l6\n"]
    assert lines_of(rotated_log, since=base + 100) == []


def test_timestamps_prefix_each_line(rotated_log: Path) -> None:
    assert lines_of(rotated_log, tail=1, timestamps=True) == ["2026-01-01T00:00:08.5Z l8\n"]


def test_torn_last_line_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    log = tmp_path / "c-json.log"
    log.write_text(entry("a\n") + "not json\n" + entry("b\n") + entry("c\n")[:10])
    assert lines_of(log) == ["a\n", "b\n"]
    assert lines_of(log, tail=1) == ["b\n"]


def test_missing_log_reads_as_empty(tmp_path: Path) -> None:
    assert lines_of(tmp_path / "none.log") == []


def test_follow_sees_appends_rotation_and_truncation(tmp_path: Path) -> None:
    """alive() runs whenever the reader is idle: each call plays the shim's next move."""
    log = tmp_path / "c-json.log"
    write_log(log, [entry("first\n")])

    def append(text: str) -> None:
        with open(log, "a") as f:
            f.write(text)

    def rotate() -> None:
        os.rename(log, f"{log}.1")
        write_log(log, [entry("after-rotation\n")])

    def truncate() -> None:
        write_log(log, [entry("after-truncate\n")])

    half = entry("split\n")
    moves = [
        lambda: append(entry("second\n")),
        lambda: append(half[:7]),  # a torn write: nothing until the rest arrives
        lambda: append(half[7:]),
        rotate,
        lambda: append(entry("x\n") * 3),
        truncate,
    ]

    def alive() -> bool:
        if moves:
            moves.pop(0)()
            return True
        return False

    got = lines_of(log, follow=True, alive=alive)
    assert got == [
        "first\n",
        "second\n",
        "split\n",
        "after-rotation\n",
        "x\n",
        "x\n",
        "x\n",
        "after-truncate\n",
    ]


def test_follow_from_tail_zero_shows_only_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "c-json.log"
    write_log(log, [entry("old\n")])
    moves = [lambda: write_log(log, [entry("old\n"), entry("new\n")])]

    def alive() -> bool:
        return bool(moves) and (moves.pop(0)() or True)

    assert lines_of(log, tail=0, follow=True, alive=alive) == ["new\n"]


# ---- files and flags ------------------------------------------------------------------


def test_exit_file_codes_and_errors(tmp_path: Path) -> None:
    assert read_exit(str(tmp_path)) is None and exit_error(str(tmp_path)) is None
    (tmp_path / "exit").write_text("137\n")
    assert read_exit(str(tmp_path)) == 137 and exit_error(str(tmp_path)) is None
    (tmp_path / "exit").write_text("error hull-runtime: rootfs /x does not exist\n")
    assert read_exit(str(tmp_path)) is None
    assert exit_error(str(tmp_path)) == "hull-runtime: rootfs /x does not exist"


def test_shim_alive_wants_a_live_hull_shim(tmp_path: Path) -> None:
    assert not shim_alive(str(tmp_path))
    (tmp_path / "shim.pid").write_text(f"{os.getpid()}\n")  # alive, but python
    assert not shim_alive(str(tmp_path))


def test_options_argv_covers_every_flag() -> None:
    opts = ShimOptions(
        id="abc",
        bundle="/b",
        runtime=["/usr/bin/python3", "-m", "hull.runtime.cli"],
        runtime_root="/run/rt",
        log_path="/l/abc-json.log",
        socket_dir="/run/shims/abc",
        log_max_size=1024,
        log_max_files=3,
        tty=True,
        stdin=True,
        exit_command=["/bin/hull", "container", "cleanup", "abc"],
    )
    argv = opts.argv("/bin/hull-shim", sync_fd=5)
    assert argv[0] == "/bin/hull-shim"
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert pairs["--id"] == "abc" and pairs["--runtime"] == "/usr/bin/python3"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--runtime-arg"] == [
        "-m",
        "hull.runtime.cli",
    ]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--exit-command-arg"] == [
        "container",
        "cleanup",
        "abc",
    ]
    assert argv[argv.index("--exit-command") + 1] == "/bin/hull"
    assert argv[argv.index("--exit-file") + 1] == "/run/shims/abc/exit"
    assert argv[argv.index("--log-max-size") + 1] == "1024"
    assert argv[argv.index("--sync-fd") + 1] == "5"
    assert "--tty" in argv and "--stdin" in argv


def test_options_leave_out_what_is_not_asked_for() -> None:
    argv = ShimOptions("abc", "/b", "runc", "/rt", "/l.log", "/s").argv("hull-shim")
    for flag in ("--tty", "--stdin", "--sync-fd", "--log-max-size", "--exit-command"):
        assert flag not in argv
    assert "--runtime-arg" not in argv


def test_missing_shim_binary_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HULL_SHIM", raising=False)
    monkeypatch.setattr("sys.executable", str(tmp_path / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HullError, match="hull-shim is not built: run scripts/setup"):
        shim_binary()
    shim = tmp_path / "hull-shim"
    shim.write_text("#!/bin/sh\n")
    shim.chmod(0o755)
    assert shim_binary() == str(shim)
