"""The VM supervisor: keeps one detached microVM container running under hull-shim.

A container started with --isolation=vm is supervised like any other: by hull-shim,
which owns its log and exit file and outlives every `hull` process. The shim runs
this module in the place of an OCI runtime:

    python -IS -c <bootstrap> --root DIR create --bundle DIR --pid-file FILE [...] ID

`create` forks the supervisor, which starts the VM (warm restore from a template,
or a cold boot; with a virtiofsd per volume) and listens on <shim dir>/vm.sock,
then reports; the parent writes the supervisor's pid to FILE and exits, so the
shim, a subreaper, inherits the supervisor as "the container" and relays its
stdout and stderr (the workload's) to the log. The engine then asks for "start"
on vm.sock (hull.vm.control): the supervisor sends the main process to the guest
agent and serves exec, signal, pause, resume and stats requests until the main process
ends; it then kills QEMU, removes the VM's run directory and exits with the
workload's exit code, which the shim records.

QEMU and virtiofsd get PR_SET_PDEATHSIG from the supervisor, and the supervisor
from the shim: killing the supervisor (or its shim) ends the VM, never leaves it
running unsupervised. One Python interpreter per VM container (about 15 MiB)
beside a guest of about 45 MiB.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hull.errors import HullError
from hull.files import replace_text
from hull.paths import HullPaths
from hull.vm.control import CONTROL_SOCKET
from hull.vm.microvm import MicroVm, VmShape, guest_assets
from hull.vm.protocol import (
    CONTROL,
    HOST_STREAMS,
    STDERR,
    STDIN,
    STDOUT,
    Frame,
    FrameReader,
    RunRequest,
    encode_control,
    encode_frame,
    parse_control,
    resize_request,
    signal_request,
    stats_request,
    stdin_frames,
)
from hull.vm.sandbox import start_vm
from hull.vm.virtiofs import Virtiofsd
from hull.vm.vmspec import VmSpec, share_tag

MAIN_ID = 1
STATS_TIMEOUT = 10.0  # a busy TCG guest can take a while to read its /proc
KILL_GRACE = 2.0  # after SIGKILL for the workload, QEMU is killed if it has not ended
PID_FILE = "pids"  # in the VM's run dir: QEMU's and virtiofsd's pids, for the engine's sweep
RUN_DIR = "vm"  # the VM's run dir, inside the shim's directory
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def supervisor_command() -> list[str]:
    """What the shim runs as the container's runtime (no `site`: about 10 ms to start)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    bootstrap = (
        f"import sys;sys.path[:0]=[{package_parent!r}];"
        "from hull.vm.supervisor import main;sys.exit(main())"
    )
    return [sys.executable, "-IS", "-c", bootstrap]


def run_dir_of(socket_dir: str | Path) -> Path:
    return Path(socket_dir) / RUN_DIR


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        command, options, _cid = _parse(args)
        if command != "create":
            raise HullError(f"the VM supervisor only creates (asked: {command!r})")
        spec = VmSpec.load(Path(options["--bundle"]))
        pid_file = Path(options["--pid-file"])
    except (HullError, KeyError) as exc:
        text = exc.message if isinstance(exc, HullError) else f"missing {exc}"
        sys.stderr.write(f"hull vm supervisor: {text}\n")
        return 1
    return create(spec, pid_file, options.get("--console-socket"))


def _parse(args: list[str]) -> tuple[str, dict[str, str], str]:
    """`[--root DIR] create --bundle DIR --pid-file FILE [--console-socket S] ID`."""
    options: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        if args[i].startswith("--"):
            if i + 1 >= len(args):
                raise HullError(f"{args[i]} needs a value")
            options[args[i]] = args[i + 1]
            i += 2
        else:
            positional.append(args[i])
            i += 1
    if len(positional) != 2:
        raise HullError(f"expected a command and an id, got {positional}")
    return positional[0], options, positional[1]


def create(spec: VmSpec, pid_file: Path, console_socket: str | None = None) -> int:
    """Fork the supervisor; once its VM runs, record its pid and leave it to the shim.

    console_socket (the shim's, with -t) receives the master of a host pty whose
    other end carries the guest terminal's bytes, raw.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 255
        try:
            code = Supervisor(spec, pid_file.parent, console_socket).serve(write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    message = b"".join(chunks)
    if message == b"ok":
        replace_text(pid_file, f"{pid}\n")
        return 0
    os.waitpid(pid, 0)
    text = message.decode(errors="replace").strip() or "the microVM supervisor failed to start"
    sys.stderr.write(text + "\n")
    return 1


class Supervisor:
    """One running VM, its main process and the exec clients on vm.sock."""

    def __init__(self, spec: VmSpec, socket_dir: Path, console_socket: str | None = None) -> None:
        self.spec = spec
        self.console_socket = console_socket
        self.main = spec.main_request()
        self.socket_dir = socket_dir
        self.run_dir = run_dir_of(socket_dir)
        self.vm: MicroVm | None = None
        self.daemons: list[Virtiofsd] = []
        self.listener: socket.socket | None = None
        self.send_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.qmp_lock = threading.Lock()
        self.clients: dict[int, socket.socket] = {}
        self.waiters: dict[int, _Reply] = {}  # stats requests waiting for the agent
        self.paused = False
        self.last_stats: dict[str, Any] = {}
        self.next_id = MAIN_ID + 1
        self.started = False
        self.finishing = False
        self.killed = False
        self.notices: list[str] = []

    # ------------------------------------------------------------------ life

    def serve(self, report_fd: int) -> int:
        """Boot, report to the waiting parent, then serve until the workload ends."""
        creator = os.getppid()
        _name_process("hull-vm")
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for signum in FORWARDED:
            signal.signal(signum, self._on_signal)
        try:
            if self.console_socket:
                self._take_terminal(self.console_socket)
            self._boot()
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the creator
            self._teardown()
            text = exc.message if isinstance(exc, HullError) else f"{type(exc).__name__}: {exc}"
            _write_all(report_fd, text.encode())
            os.close(report_fd)
            return 1
        _write_all(report_fd, b"ok")
        os.close(report_fd)
        self._die_with_shim(creator)
        self._accept_loop()
        return 255  # not reached: _finish exits the process

    def _boot(self) -> None:
        spec = self.spec
        paths = HullPaths(spec.root, spec.runroot)
        shutil.rmtree(self.run_dir, ignore_errors=True)  # a crashed run's leftovers
        self.run_dir.mkdir(parents=True)
        for index, share in enumerate(spec.shares):
            daemon = Virtiofsd.start(Path(share.source), share_tag(index), self.run_dir)
            self.daemons.append(daemon)
            self._record_pids()
        assets = guest_assets(paths)
        self.vm = start_vm(
            paths,
            assets,
            VmShape(spec.accel, spec.memory_mib, spec.cpus),
            Path(spec.rootfs),
            chain_id=spec.chain_id,
            warm=spec.warm,
            notice=self.notices.append,
            run_dir=self.run_dir,
            shares=tuple(d.share for d in self.daemons),
            nic=spec.interface.nic() if spec.interface else None,
        )
        self._record_pids()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        path = self.socket_dir / CONTROL_SOCKET
        path.unlink(missing_ok=True)
        listener.bind(str(path))
        listener.listen(16)
        self.listener = listener

    def _record_pids(self) -> None:
        pids = [d.process.pid for d in self.daemons]
        if self.vm is not None:
            pids.append(self.vm.qemu.pid)
        replace_text(self.run_dir / PID_FILE, "".join(f"{pid}\n" for pid in pids))

    def _die_with_shim(self, creator: int) -> None:
        """Once the creator has exited the shim is our parent: die with it."""
        deadline = time.monotonic() + 5.0
        while os.getppid() == creator and time.monotonic() < deadline:
            time.sleep(0.001)
        parent = os.getppid()
        if parent in (1, creator):
            return  # no subreaper above us (run by hand): nothing to die with
        from hull.runtime.linux.syscalls import PR_SET_PDEATHSIG, prctl

        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the shim died before the prctl
            os.kill(os.getpid(), signal.SIGKILL)

    def _accept_loop(self) -> None:
        """Clients in, each to a thread of its own; signals handled as they come.

        A signal may land in any thread, while Python runs handlers in the main one
        only: the wakeup fd makes this loop (and so the handlers) run at once.
        """
        import select

        assert self.listener is not None
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        listening = self.listener.fileno()
        while True:
            ready, _, _ = select.select([listening, wake_read], [], [])
            if wake_read in ready:
                while True:
                    try:
                        if not os.read(wake_read, 512):
                            break
                    except BlockingIOError:
                        break
            if listening not in ready:
                continue
            try:
                conn, _ = self.listener.accept()
            except OSError:
                time.sleep(0.05)  # the listener closes as the supervisor finishes
                continue
            threading.Thread(target=self._serve_client, args=(conn,), daemon=True).start()

    def _finish(self, code: int) -> None:
        """The workload ended (or the VM did): stop everything and exit with code."""
        with self.state_lock:
            if self.finishing:
                return
            self.finishing = True
        try:
            (self.socket_dir / CONTROL_SOCKET).unlink(missing_ok=True)
            self._teardown()
        finally:
            os._exit(code)

    def _teardown(self) -> None:
        if self.vm is not None:
            self.vm.close()  # kills QEMU; nothing to flush (the root disk is read-only)
        for daemon in self.daemons:
            daemon.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # ------------------------------------------------------------------ the agent

    def _send(self, data: bytes) -> None:
        assert self.vm is not None
        with self.send_lock:
            self.vm.send(data)

    def _start(self) -> dict[str, Any]:
        with self.state_lock:
            if self.started or self.finishing:
                return {"type": "error", "message": "the microVM's process was started already"}
            self.started = True
        rows, cols = _window_size(1) if self.main.tty else (0, 0)
        request = dataclasses.replace(
            self.main,
            id=MAIN_ID,
            main=True,
            realtime_ns=time.time_ns(),
            mounts=self.spec.mount_specs(),
            rows=rows,
            cols=cols,
        )
        threading.Thread(target=self._read_agent, daemon=True).start()
        self._send(request.encode())
        if self.main.stdin:
            threading.Thread(target=self._forward_stdin, daemon=True).start()
        return {"type": "ok"}

    def _forward_stdin(self) -> None:
        """Our stdin (the shim's pipe, or the host pty) to the main process's."""
        while True:
            try:
                data = os.read(0, 65536)
            except InterruptedError:
                continue
            except OSError:
                data = b""  # EIO: the shim closed the pty's master
            try:
                for frame in stdin_frames(MAIN_ID, data):
                    self._send(frame)
            except OSError:
                return
            if not data:
                return

    def _take_terminal(self, console_socket: str) -> None:
        """A host pty for the shim (its master) and for us (the slave as stdio, raw).

        The slave is our controlling terminal, so the shim's resizes arrive as SIGWINCH.
        """
        import array
        import fcntl
        import termios
        import tty

        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(console_socket)
                fds = array.array("i", [master])
                conn.sendmsg([b"hull"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        finally:
            os.close(master)
            if slave > 2:
                os.close(slave)
        signal.signal(signal.SIGWINCH, self._on_resize)

    def _on_resize(self, _signum: int, _frame: object) -> None:
        threading.Thread(target=self._resize_main, daemon=True).start()

    def _resize_main(self) -> None:
        rows, cols = _window_size(1)
        if self.started and rows and cols:
            try:
                self._send(resize_request(MAIN_ID, rows, cols))
            except OSError:
                pass

    def _read_agent(self) -> None:
        assert self.vm is not None
        while True:
            try:
                frame = self.vm.read_frame()
            except HullError as exc:
                if not self.killed:
                    _write_all(2, f"hull: the microVM stopped: {exc.message}\n".encode())
                self._finish(137 if self.killed else 255)
                return
            if frame.id != MAIN_ID:
                self._route(frame)
            elif frame.stream == STDOUT:
                _write_all(1, frame.payload)
            elif frame.stream == STDERR:
                _write_all(2, frame.payload)
            else:
                message = parse_control(frame.payload)
                if message["type"] == "error":
                    _write_all(2, f"hull: {message.get('message', 'cannot start')}\n".encode())
                if message["type"] in ("exit", "error"):
                    self._finish(int(message.get("code", 255)))
                    return

    def _route(self, frame: Frame) -> None:
        """An exec'd process's frame to its client (dropped if the client left)."""
        with self.state_lock:
            conn = self.clients.get(frame.id)
            waiter = self.waiters.get(frame.id)
        if waiter is not None and frame.stream == CONTROL:
            waiter.put(parse_control(frame.payload))
            return
        ended = False
        if frame.stream == CONTROL:
            ended = parse_control(frame.payload)["type"] in ("exit", "error")
            if ended:
                with self.state_lock:
                    self.clients.pop(frame.id, None)
        if conn is None:
            return
        try:
            conn.sendall(encode_frame(frame.stream, frame.payload))
        except OSError:
            with self.state_lock:
                self.clients.pop(frame.id, None)
            ended = True
        if ended:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the client's thread, which closes it
            except OSError:
                pass

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, _frame: object) -> None:
        # In the main thread, between bytecodes: the work goes to a thread of its own
        # so that no lock held by the interrupted code is needed here.
        threading.Thread(target=self._signal_main, args=(signum,), daemon=True).start()

    def _signal_main(self, signum: int) -> None:
        if not self.started:
            self._finish(128 + signum)  # nothing runs yet: the VM simply ends
            return
        if signum == signal.SIGKILL:
            self.killed = True
            timer = threading.Timer(KILL_GRACE, self._kill_qemu)
            timer.daemon = True
            timer.start()
        try:
            self._send(signal_request(MAIN_ID, signum))
        except OSError:
            if signum == signal.SIGKILL:
                self._kill_qemu()

    def _kill_qemu(self) -> None:
        """The workload ignored SIGKILL's grace: power off the hard way."""
        if self.vm is not None and not self.finishing:
            self.vm.qemu.process.kill()  # the agent reader sees the channel close

    def _qmp(self, command: str) -> None:
        assert self.vm is not None
        with self.qmp_lock:
            self.vm.qemu.qmp_channel().execute(command)

    # ------------------------------------------------------------------ clients

    def _serve_client(self, conn: socket.socket) -> None:
        reader = FrameReader(conn, HOST_STREAMS)
        try:
            conn.settimeout(30.0)
            body = reader.read_control()
            conn.settimeout(None)
            kind = body.get("type")
            if kind == "exec":
                self._exec(conn, reader, body)
                return
            reply = self._answer(kind, body)
            conn.sendall(encode_control(reply))
        except (OSError, HullError):
            pass
        finally:
            conn.close()

    def _answer(self, kind: object, body: dict[str, Any]) -> dict[str, Any]:
        try:
            if kind == "start":
                return self._start()
            if kind == "signal":
                self._signal_main(int(body["signal"]))
                return {"type": "ok"}
            if kind == "pause":
                self._qmp("stop")
                self.paused = True
                return {"type": "ok"}
            if kind == "resume":
                self._qmp("cont")
                self.paused = False
                return {"type": "ok"}
            if kind == "stats":
                return self._stats()
        except (HullError, KeyError, ValueError, OSError) as exc:
            text = exc.message if isinstance(exc, HullError) else str(exc)
            return {"type": "error", "message": text}
        return {"type": "error", "message": f"unknown request {kind!r}"}

    def _stats(self) -> dict[str, Any]:
        """The guest's figures (the agent's "stats": memory, CPU, disk, processes) and the
        host CPU time of the VM's processes (QEMU, virtiofsd). A paused guest cannot
        answer: its last figures stand, with the host's CPU time brought up to date."""
        with self.state_lock:
            if not self.started or self.finishing:
                return {"type": "error", "message": "the microVM is not running"}
            request_id = self.next_id
            self.next_id += 1
            waiter = _Reply()
            if not self.paused:
                self.waiters[request_id] = waiter
        try:
            if not self.paused:
                self._send(stats_request(request_id))
            reply = waiter.get(0 if self.paused else STATS_TIMEOUT)
        finally:
            with self.state_lock:
                self.waiters.pop(request_id, None)
        if reply is None and not self.paused:
            return {"type": "error", "message": "the guest agent did not answer in time"}
        guest = dict(reply or self.last_stats)
        if reply is not None:
            self.last_stats = reply
        guest.update(type="stats", host_cpu_ns=self._host_cpu_ns(), paused=self.paused)
        return guest

    def _host_cpu_ns(self) -> int:
        pids = [d.process.pid for d in self.daemons]
        if self.vm is not None:
            pids.append(self.vm.qemu.pid)
        return sum(process_cpu_ns(pid) for pid in pids)

    def _exec(self, conn: socket.socket, reader: FrameReader, body: dict[str, Any]) -> None:
        with self.state_lock:
            running = self.started and not self.finishing
            process_id = self.next_id
            if running:
                self.next_id += 1
                self.clients[process_id] = conn
        if not running:
            conn.sendall(
                encode_control(
                    {"type": "error", "code": 125, "message": "the microVM is not running"}
                )
            )
            return
        try:
            request = dataclasses.replace(
                RunRequest.from_body(body),
                id=process_id,
                main=False,
                realtime_ns=None,
                mounts=[],
                interfaces=[],
                files=[],
            )
            self._send(request.encode())
            while True:
                frame = reader.read_frame()
                if frame.stream == STDIN:
                    self._send(encode_frame(STDIN, frame.payload, process_id))
                    continue
                message = parse_control(frame.payload)
                if message["type"] == "resize":
                    rows, cols = int(message["rows"]), int(message["cols"])
                    self._send(resize_request(process_id, rows, cols))
                elif message["type"] == "signal":
                    self._send(signal_request(process_id, int(message["signal"])))
        except (HullError, OSError, KeyError, ValueError, TypeError):
            pass  # the client left (its process runs on, unheard) or sent garbage
        finally:
            with self.state_lock:
                if self.clients.get(process_id) is conn:
                    del self.clients[process_id]


class _Reply:
    """One control message handed from the agent's reader thread to a waiting request."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._message: dict[str, Any] | None = None

    def put(self, message: dict[str, Any]) -> None:
        self._message = message
        self._event.set()

    def get(self, timeout: float) -> dict[str, Any] | None:
        self._event.wait(timeout)
        return self._message


def process_cpu_ns(pid: int) -> int:
    """A process's user and system CPU time in ns (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return  # the shim is gone: nobody is left to read it
        view = view[written:]


def _window_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 0, 0
    return size.lines, size.columns


def _name_process(name: str) -> None:
    """`ps` and /proc/PID/comm say what this interpreter is."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name)
    except OSError:
        pass
