"""The Python side of hull-shim: spawn it, attach to it, read what it leaves behind.

hull-shim (shim/hull-shim.c) is the small C supervisor that keeps a detached
container's I/O, log and exit code while no `hull` process runs. This module starts
it and waits for its one sync message, speaks its attach protocol (Docker's 8-byte
stdcopy frames both ways), and reads the files it writes: the json-file log (with its
rotations), the exit file and shim.pid.

It sits on the `hull run` path, so it imports only the standard library's light
modules (json and select lazily, socket only to attach).
"""

from __future__ import annotations

import os
import sys
import time

from hull.errors import HullError, StateError

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` and `collections` cost milliseconds on the `hull run` path
    import socket
    from collections.abc import Callable, Iterator

SYNC_TIMEOUT = 30.0
FOLLOW_INTERVAL = 0.1

STDIN, STDOUT, STDERR, RESIZE = 0, 1, 2, 3
HEADER_SIZE = 8
MAX_FRAME = 1 << 20  # stdin larger than this goes out in several frames

ATTACH_SOCKET = "attach.sock"
EXIT_FILE = "exit"
PID_FILE = "shim.pid"
SHIM_LOG = "shim.log"


class ShimOptions:
    """What one hull-shim is told: the container, its runtime, where its files go."""

    def __init__(
        self,
        id: str,
        bundle: str,
        runtime: list[str] | str,
        runtime_root: str,
        log_path: str,
        socket_dir: str,
        log_max_size: int | None = None,
        log_max_files: int | None = None,
        exit_file: str | None = None,
        tty: bool = False,
        stdin: bool = False,
        exit_command: list[str] | None = None,
    ) -> None:
        self.id = id
        self.bundle = str(bundle)
        self.runtime = [runtime] if isinstance(runtime, str) else [str(a) for a in runtime]
        self.runtime_root = str(runtime_root)
        self.log_path = str(log_path)
        self.socket_dir = str(socket_dir)
        self.log_max_size = log_max_size
        self.log_max_files = log_max_files
        self.exit_file = str(exit_file) if exit_file else os.path.join(self.socket_dir, EXIT_FILE)
        self.tty = tty
        self.stdin = stdin
        self.exit_command = exit_command
        if not self.runtime:
            raise HullError("ShimOptions.runtime is empty")

    def argv(self, binary: str, sync_fd: int | None = None) -> list[str]:
        """The shim's command line (hull-shim --help documents each flag)."""
        args = [binary, "--id", self.id, "--bundle", self.bundle, "--runtime", self.runtime[0]]
        for extra in self.runtime[1:]:
            args += ["--runtime-arg", extra]
        args += ["--runtime-root", self.runtime_root, "--log-path", self.log_path]
        if self.log_max_size:
            args += ["--log-max-size", str(self.log_max_size)]
        if self.log_max_files:
            args += ["--log-max-files", str(self.log_max_files)]
        args += ["--exit-file", self.exit_file, "--socket-dir", self.socket_dir]
        if self.tty:
            args.append("--tty")
        if self.stdin:
            args.append("--stdin")
        if sync_fd is not None:
            args += ["--sync-fd", str(sync_fd)]
        if self.exit_command:
            args += ["--exit-command", self.exit_command[0]]
            for extra in self.exit_command[1:]:
                args += ["--exit-command-arg", extra]
        return args


class ShimHandle:
    """A running shim and the created (not yet started) container it supervises."""

    __slots__ = ("shim_pid", "container_pid", "socket_dir", "warning")

    def __init__(
        self, shim_pid: int, container_pid: int, socket_dir: str, warning: str | None = None
    ) -> None:
        self.shim_pid = shim_pid
        self.container_pid = container_pid
        self.socket_dir = socket_dir
        self.warning = warning  # what the runtime printed on stderr while creating

    def __repr__(self) -> str:
        return (
            f"ShimHandle(shim_pid={self.shim_pid}, container_pid={self.container_pid}, "
            f"socket_dir={self.socket_dir!r})"
        )


def shim_binary() -> str:
    """$HULL_SHIM if set (tests, development), else hull-shim beside this interpreter
    (the venv's bin, where scripts/setup builds it), else on PATH."""
    override = os.environ.get("HULL_SHIM")
    if override:
        if not os.access(override, os.X_OK):
            raise HullError(f"HULL_SHIM={override} is not an executable")
        return override
    beside = os.path.join(os.path.dirname(sys.executable), "hull-shim")
    if os.access(beside, os.X_OK):
        return beside
    import shutil

    found = shutil.which("hull-shim")
    if found:
        return found
    raise HullError("hull-shim is not built: run scripts/setup")


def spawn_shim(opts: ShimOptions, timeout: float = SYNC_TIMEOUT) -> ShimHandle:
    """Start a shim (it daemonizes) and wait until the runtime has created the container.

    The shim writes one JSON line on the sync pipe: {"pid": N} once the container is
    created, or {"error": "..."} with the runtime's message, after which it has
    cleaned up and exited.
    """
    binary = shim_binary()
    os.makedirs(opts.socket_dir, mode=0o700, exist_ok=True)
    read_end, write_end = os.pipe()
    try:
        os.set_inheritable(write_end, True)
        null = os.devnull
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, null, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, null, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, null, os.O_WRONLY, 0),
        ]
        try:
            pid = os.posix_spawn(
                binary, opts.argv(binary, write_end), os.environ, file_actions=actions
            )
        except OSError as err:
            raise HullError(f"cannot run {binary}: {err.strerror}") from None
        os.close(write_end)
        write_end = -1
        _, status = os.waitpid(pid, 0)  # the shim's first process exits once it forked
        line = _read_sync(read_end, timeout, opts.socket_dir)
        if not line:
            code = os.waitstatus_to_exitcode(status)
            raise HullError(
                f"hull-shim exited without reporting (exit code {code}); "
                f"see {os.path.join(opts.socket_dir, SHIM_LOG)}"
            )
        import json

        try:
            message = json.loads(line)
        except ValueError:
            raise HullError(f"hull-shim sent a malformed sync message: {line!r}") from None
        # On success the shim closes the pipe right after the message; on error it holds
        # it until it has exited: either way, past EOF it holds nothing of ours.
        _wait_eof(read_end, 5.0)
        if "error" in message:
            raise HullError(str(message["error"]) or "the runtime failed to create the container")
        shim_pid = _read_pid(opts.socket_dir) or 0
        return ShimHandle(shim_pid, int(message["pid"]), opts.socket_dir, message.get("warning"))
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def _read_sync(fd: int, timeout: float, socket_dir: str) -> bytes:
    """The sync line, or b"" if the shim went away without one; kills it on timeout."""
    import select

    deadline = time.monotonic() + timeout
    data = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            _kill_shim_group(socket_dir)
            raise HullError(f"hull-shim did not report within {timeout:g} s; killed it")
        if not poller.poll(left * 1000):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].strip()


def _wait_eof(fd: int, timeout: float) -> None:
    import select

    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready and not os.read(fd, 4096):
            return


def _kill_shim_group(socket_dir: str) -> None:
    """A shim stuck in `runtime create`: kill it and the runtime (its process group)."""
    pid = _read_pid(socket_dir)
    if not pid or not _is_shim(pid):
        return
    try:
        os.killpg(os.getpgid(pid), 9)
    except OSError:
        pass


# ---- files the shim leaves ------------------------------------------------------------


def _read_pid(socket_dir: str) -> int | None:
    try:
        with open(os.path.join(socket_dir, PID_FILE)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _is_shim(pid: int) -> bool:
    """pid is a live (not zombie) hull-shim."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    comm = stat[stat.find(b"(") + 1 : stat.rfind(b")")]
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return comm == b"hull-shim" and state not in (b"Z", b"X")


def shim_alive(socket_dir: str) -> bool:
    """The shim of socket_dir still runs (shim.pid names a live hull-shim)."""
    pid = _read_pid(socket_dir)
    return pid is not None and _is_shim(pid)


def _read_exit_file(socket_dir: str) -> str | None:
    try:
        with open(os.path.join(socket_dir, EXIT_FILE)) as f:
            return f.read()
    except OSError:
        return None


def read_exit(socket_dir: str) -> int | None:
    """The container's exit code (128+N for signal N), None while it runs or if it never ran."""
    text = _read_exit_file(socket_dir)
    if text is None or text.startswith("error"):
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def exit_error(socket_dir: str) -> str | None:
    """The runtime's message if creating the container failed."""
    text = _read_exit_file(socket_dir)
    if text is None or not text.startswith("error"):
        return None
    return text[len("error") :].strip()


# ---- attach ---------------------------------------------------------------------------


def encode_frame(stream: int, payload: bytes) -> bytes:
    """Docker's stdcopy frame: [stream, 0, 0, 0, len32 big-endian] + payload."""
    return bytes((stream, 0, 0, 0)) + len(payload).to_bytes(4, "big") + payload


class FrameDecoder:
    """Splits a byte stream into (stream, payload) frames, whatever the chunking."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER_SIZE:
            size = int.from_bytes(self._buf[4:8], "big")
            if len(self._buf) < HEADER_SIZE + size:
                break
            frames.append((self._buf[0], bytes(self._buf[HEADER_SIZE : HEADER_SIZE + size])))
            del self._buf[: HEADER_SIZE + size]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)


class AttachClient:
    """One connection to a shim's attach.sock: output frames in, stdin and resizes out."""

    def __init__(self, sock: socket.socket, stdin: bool, tty: bool) -> None:
        self._sock = sock
        self._decoder = FrameDecoder()
        self._frames: list[tuple[int, bytes]] = []
        self.stdin = stdin
        self.tty = tty

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_frame(self) -> tuple[int, bytes] | None:
        """The next (stream, payload), blocking; None once the shim closed (container gone)."""
        while not self._frames:
            try:
                data = self._sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self._frames.extend(self._decoder.feed(data))
        return self._frames.pop(0)

    def send_stdin(self, data: bytes) -> None:
        if not self.stdin:
            raise StateError("this attach connection was opened without stdin")
        for start in range(0, len(data), MAX_FRAME):
            self._sock.sendall(encode_frame(STDIN, data[start : start + MAX_FRAME]))

    def close_stdin(self) -> None:
        """End of input: the container's stdin sees EOF (^D on a terminal)."""
        self._sock.sendall(encode_frame(STDIN, b""))

    def resize(self, rows: int, cols: int) -> None:
        payload = rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
        self._sock.sendall(encode_frame(RESIZE, payload))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AttachClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def attach(socket_dir: str, stdin: bool = False, tty: bool = False) -> AttachClient:
    """Connect to the shim; output from now on arrives as frames (all stream 1 with a tty)."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(os.path.join(socket_dir, ATTACH_SOCKET))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise StateError("cannot attach: the container is not running") from None
    return AttachClient(sock, stdin, tty)


# ---- json-file logs -------------------------------------------------------------------

LogEntry = tuple[str, str, str]  # (stream, line, time as RFC 3339 with nanoseconds)


def parse_log_time(text: str) -> float:
    """Seconds since the epoch from the shim's (and Go's) RFC 3339 UTC time.

    Written by hand: `datetime` cannot hold nanoseconds and strptime is slow.
    """
    if len(text) < 20 or text[4] != "-" or text[10] not in "Tt":
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day = int(text[0:4]), int(text[5:7]), int(text[8:10])
    hour, minute, second = int(text[11:13]), int(text[14:16]), int(text[17:19])
    rest = text[19:]
    fraction = 0.0
    if rest.startswith("."):
        digits = len(rest) - len(rest[1:].lstrip("0123456789"))
        fraction = float("0" + rest[:digits])
        rest = rest[digits:]
    offset = 0
    if rest in ("Z", "z"):
        pass
    elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
        offset = (int(rest[1:3]) * 3600 + int(rest[4:6]) * 60) * (1 if rest[0] == "+" else -1)
    else:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    days = _days_from_civil(year, month, day)
    return days * 86400 + hour * 3600 + minute * 60 + second + fraction - offset


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def log_files(log_path: str) -> list[str]:
    """The log and its rotations, oldest first: log.N ... log.1, log."""
    rotated = []
    n = 1
    while os.path.exists(f"{log_path}.{n}"):
        rotated.append(f"{log_path}.{n}")
        n += 1
    return [*reversed(rotated), log_path]


def _complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """Whole lines of data and the bytes they span (a partial last line is left)."""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


def _last_lines(fd: int, end: int, count: int) -> tuple[list[bytes], int]:
    """Up to count whole lines before offset end, read backwards; and where they end."""
    block = 65536
    pos = end
    data = b""
    while pos > 0 and data.count(b"\n") <= count:
        step = min(block, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
    lines, span = _complete_lines(data)
    return lines[-count:] if count else [], pos + span


def _decode(raw: bytes, timestamps: bool) -> LogEntry | None:
    import json

    try:
        entry = json.loads(raw)
        line = entry["log"]
        stamp = entry.get("time", "")
        stream = entry.get("stream", "stdout")
    except (ValueError, KeyError, TypeError):
        return None  # a torn or foreign line: skip it as Docker does
    if timestamps:
        line = f"{stamp} {line}"
    return stream, line, stamp


def read_log(
    log_path: str,
    since: float | None = None,
    until: float | None = None,
    tail: int | None = None,
    follow: bool = False,
    timestamps: bool = False,
    socket_dir: str | None = None,
    alive: Callable[[], bool] | None = None,
) -> Iterator[LogEntry]:
    """(stream, line, time) from a json-file log and its rotations, oldest first.

    since/until are epoch seconds (inclusive); tail keeps the last N entries (taken
    before since/until, as Docker does). timestamps prefixes each line with its
    time. follow keeps reading as the log grows and across rotations until the
    shim of socket_dir is gone (or alive() says so); without either it follows
    until the caller stops.
    """
    if alive is None and socket_dir is not None:
        alive = _shim_alive_check(socket_dir)

    def keep(entry: LogEntry) -> bool | None:
        """True to yield, False to skip, None to stop (past until)."""
        if since is None and until is None:
            return True
        try:
            stamp = parse_log_time(entry[2])
        except ValueError:
            return True
        if until is not None and stamp > until:
            return None
        return since is None or stamp >= since

    def emit(raws: list[bytes]) -> Iterator[LogEntry | None]:
        for raw in raws:
            entry = _decode(raw, timestamps)
            if entry is None:
                continue
            verdict = keep(entry)
            if verdict is None:
                yield None
                return
            if verdict:
                yield entry

    base_fd = _open_or_none(log_path)
    while base_fd is None:
        if not follow or (alive is not None and not alive()):
            return
        time.sleep(FOLLOW_INTERVAL)
        base_fd = _open_or_none(log_path)
    try:
        end = os.fstat(base_fd).st_size
        older = log_files(log_path)[:-1]
        if tail is None:
            batches = [_whole_file(path) for path in older]
            lines, pos = _complete_lines(os.pread(base_fd, end, 0) if end else b"")
            batches.append(lines)
        else:
            lines, pos = _last_lines(base_fd, end, tail)
            batches = [lines]
            need = tail - len(lines)
            for path in reversed(older):
                if need <= 0:
                    break
                older_lines = _tail_of_file(path, need)
                batches.insert(0, older_lines)
                need -= len(older_lines)
        for batch in batches:
            for entry in emit(batch):
                if entry is None:
                    return
                yield entry
        if not follow:
            return
        yield from _follow(log_path, base_fd, pos, emit, alive)
    finally:
        # _follow may have swapped files; it closes what it opened itself.
        try:
            os.close(base_fd)
        except OSError:
            pass


def _shim_alive_check(socket_dir: str) -> Callable[[], bool]:
    return lambda: shim_alive(socket_dir)


def _follow(
    log_path: str,
    fd: int,
    pos: int,
    emit: Callable[[list[bytes]], Iterator[LogEntry | None]],
    alive: Callable[[], bool] | None,
) -> Iterator[LogEntry]:
    """Tail -F: new lines as they come, across rotation (new inode) and truncation."""
    own_fd = -1  # an fd opened here after a rotation (the caller closes the first one)
    pending = b""
    finishing = False
    try:
        while True:
            chunk = os.pread(fd, 65536, pos)
            if chunk:
                pos += len(chunk)
                lines, span = _complete_lines(pending + chunk)
                pending = (pending + chunk)[span:]
                for entry in emit(lines):
                    if entry is None:
                        return
                    yield entry
                continue
            if finishing:
                return
            rotated_to = _open_if_rotated(log_path, fd)
            if rotated_to is not None:
                if own_fd >= 0:
                    os.close(own_fd)
                fd = own_fd = rotated_to
                pos, pending = 0, b""
                continue
            if os.fstat(fd).st_size < pos:  # truncated in place (max-file 1)
                pos, pending = 0, b""
                continue
            if alive is not None and not alive():
                finishing = True  # one last read: the shim wrote everything before it went
                continue
            time.sleep(FOLLOW_INTERVAL)
    finally:
        if own_fd >= 0:
            os.close(own_fd)


def _open_if_rotated(log_path: str, fd: int) -> int | None:
    """A new fd if log_path now names another file than fd (the shim rotated)."""
    try:
        st = os.stat(log_path)
    except FileNotFoundError:
        return None  # between rename and re-create
    current = os.fstat(fd)
    if (st.st_ino, st.st_dev) == (current.st_ino, current.st_dev):
        return None
    return _open_or_none(log_path)


def _open_or_none(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _whole_file(path: str) -> list[bytes]:
    try:
        with open(path, "rb") as f:
            return _complete_lines(f.read())[0]
    except FileNotFoundError:
        return []


def _tail_of_file(path: str, count: int) -> list[bytes]:
    fd = _open_or_none(path)
    if fd is None:
        return []
    try:
        return _last_lines(fd, os.fstat(fd).st_size, count)[0]
    finally:
        os.close(fd)
