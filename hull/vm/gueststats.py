"""What a microVM's agent says about its guest, read for `hull stats` and `hull top` (pure).

The agent answers a "stats" request from the guest's /proc/meminfo, /proc/stat,
/proc/uptime, /sys/block/vda/stat and process table (guest/hull-agent.c); the VM
supervisor adds the host CPU time of QEMU and virtiofsd (host_cpu_ns). A guest
process comes as [pid, ppid, uid, state, cpu_ticks, start_ticks, tty_nr, rss_pages,
command]; kernel threads and the agent (the guest's PID 1) are left out by the agent,
so the table is the container's processes and nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hull.errors import HullError

PS_EF_TITLES = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]


@dataclass(frozen=True)
class GuestProcess:
    pid: int
    ppid: int
    uid: int
    state: str
    cpu_ticks: int  # user + system
    start_ticks: int  # after the guest booted
    tty: int  # tty_nr of proc(5)
    rss_pages: int
    command: str


@dataclass(frozen=True)
class GuestStats:
    mem_total: int = 0  # bytes: the guest's RAM as its kernel sees it
    mem_available: int = 0
    cpu_ticks: list[int] = field(default_factory=list)  # /proc/stat's cpu line
    cpus: int = 1
    uptime: float = 0.0  # seconds since the guest booted
    clk_tck: int = 100
    read_bytes: int = 0  # the root disk's
    write_bytes: int = 0
    host_cpu_ns: int = 0  # QEMU's and virtiofsd's CPU time on the host
    paused: bool = False
    processes: list[GuestProcess] = field(default_factory=list)

    @property
    def mem_used(self) -> int:
        """What the guest uses: its RAM less what it could still hand out (MemAvailable)."""
        return max(0, self.mem_total - self.mem_available)

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> GuestStats:
        try:
            processes = [
                GuestProcess(
                    int(p[0]),
                    int(p[1]),
                    int(p[2]),
                    str(p[3]),
                    int(p[4]),
                    int(p[5]),
                    int(p[6]),
                    int(p[7]),
                    str(p[8]),
                )
                for p in reply.get("procs") or []
            ]
            return cls(
                mem_total=int(reply.get("mem_total_kb") or 0) * 1024,
                mem_available=int(reply.get("mem_available_kb") or 0) * 1024,
                cpu_ticks=[int(v) for v in reply.get("cpu") or []],
                cpus=int(reply.get("cpus") or 1),
                uptime=int(reply.get("uptime_ms") or 0) / 1000.0,
                clk_tck=int(reply.get("clk_tck") or 100),
                read_bytes=int(reply.get("read_bytes") or 0),
                write_bytes=int(reply.get("write_bytes") or 0),
                host_cpu_ns=int(reply.get("host_cpu_ns") or 0),
                paused=bool(reply.get("paused")),
                processes=sorted(processes, key=lambda p: p.pid),
            )
        except (TypeError, ValueError, IndexError) as exc:
            raise HullError(f"garbled stats from the guest agent: {exc}") from None


def passwd_names(text: str) -> dict[int, str]:
    """uid -> name from an /etc/passwd (the first name of a uid wins, as getpwuid)."""
    names: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            names.setdefault(int(parts[2]), parts[0])
    return names


def tty_name(tty_nr: int) -> str:
    """ps's TTY column for a tty_nr (proc(5)): pts/N, ttyN, console, else "?"."""
    if tty_nr == 0:
        return "?"
    major = (tty_nr >> 8) & 0xFFF
    minor = (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:
        return f"pts/{minor + (major - 136) * 256}"
    if major == 4 and minor < 64:
        return f"tty{minor}"
    if major == 5 and minor == 1:
        return "console"
    if major == 229:
        return f"hvc{minor}"
    return "?"


def cpu_time(seconds: int) -> str:
    """ps's TIME: [DD-]HH:MM:SS."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{text}" if days else text


def start_time(started: float, now: float) -> str:
    """ps's STIME: HH:MM within the last day, else MmmDD, else the year."""
    when = time.localtime(started)
    if now - started < 86400:
        return time.strftime("%H:%M", when)
    if when.tm_year == time.localtime(now).tm_year:
        return time.strftime("%b%d", when)
    return str(when.tm_year)


def ps_ef(
    stats: GuestStats, names: dict[int, str], now: float
) -> tuple[list[str], list[list[str]]]:
    """`ps -ef`'s titles and rows for the guest's processes.

    Start times are measured on the guest's monotonic clock (its uptime and each
    process's start ticks) and placed on the host's wall clock (now): a restored
    guest's own wall clock started where its template stopped.
    """
    rows = []
    for proc in stats.processes:
        elapsed = max(0.0, stats.uptime - proc.start_ticks / stats.clk_tck)
        cpu_seconds = proc.cpu_ticks / stats.clk_tck
        percent = min(99, int(cpu_seconds * 100 / elapsed)) if elapsed > 0 else 0
        rows.append(
            [
                names.get(proc.uid, str(proc.uid)),
                str(proc.pid),
                str(proc.ppid),
                str(percent),
                start_time(now - elapsed, now),
                tty_name(proc.tty),
                cpu_time(int(cpu_seconds)),
                proc.command,
            ]
        )
    return list(PS_EF_TITLES), rows
