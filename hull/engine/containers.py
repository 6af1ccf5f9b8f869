"""Containers: create, start, stop, kill, remove, wait, and the crash sweep.

Hull is daemonless: each `hull` process is the engine while it runs. A started
container is supervised by its hull-shim (hull/engine/shim.py), which owns the
log file and the exit code and outlives any `hull` process. When a container
exits, its shim runs `hull container cleanup ID` (the exit command) to unmount
its rootfs, delete the runtime's state, record the exit and apply --rm and the
restart policy; every `hull` invocation also sweeps (reconcile) what a killed
process left half done.
"""

from __future__ import annotations

import os
import sys
import time
from os.path import join

from hull.engine.db import Database
from hull.engine.runconfig import RunConfig
from hull.errors import ConfigError, HullError, NotFoundError, StateError
from hull.files import read_text, replace_text, write_text
from hull.paths import HullPaths
from hull.records import dataclass
from hull.runtime import fastjson  # not `json`: ~1 ms of `hull run`

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from hull.engine.images import ImageRecord, ImageService
    from hull.engine.netsetup import NetworkPlan
    from hull.engine.runconfig import MountSpec
    from hull.engine.shim import ShimHandle

CREATED, RUNNING, PAUSED, EXITED, DEAD = "created", "running", "paused", "exited", "dead"

_ADJECTIVES = (
    "admiring",
    "brave",
    "calm",
    "clever",
    "eager",
    "elated",
    "festive",
    "gifted",
    "happy",
    "jolly",
    "keen",
    "kind",
    "lucid",
    "modest",
    "nifty",
    "proud",
    "quirky",
    "serene",
    "sharp",
    "stoic",
    "tender",
    "upbeat",
    "vibrant",
    "witty",
    "zen",
)
_NAMES = (
    "babbage",
    "bohr",
    "curie",
    "darwin",
    "dijkstra",
    "einstein",
    "feynman",
    "galileo",
    "hopper",
    "hypatia",
    "kepler",
    "knuth",
    "lamport",
    "lovelace",
    "mccarthy",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "thompson",
    "torvalds",
    "turing",
    "wozniak",
)


@dataclass
class ContainerRecord:
    """A row of the containers table."""

    id: str
    name: str
    image_id: str
    image_name: str
    run: RunConfig
    state: str
    pid: int
    shim_pid: int
    exit_code: int | None
    error: str
    created: float
    started_at: float | None
    finished_at: float | None
    restart_count: int
    stopped_by_user: bool
    oom_killed: bool

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @classmethod
    def from_row(cls, row: Any) -> ContainerRecord:
        return cls(
            id=row["id"],
            name=row["name"],
            image_id=row["image_id"],
            image_name=row["image_name"],
            run=RunConfig.from_dict(fastjson.loads(row["run_config"])),
            state=row["state"],
            pid=row["pid"],
            shim_pid=row["shim_pid"],
            exit_code=row["exit_code"],
            error=row["error"],
            created=row["created"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            restart_count=row["restart_count"],
            stopped_by_user=bool(row["stopped_by_user"]),
            oom_killed=bool(row["oom_killed"]),
        )


class ContainerLayout:
    """Where one container's files live (see /var/lib/hull/containers/<id>); str
    paths, as hull.paths keeps them."""

    def __init__(self, paths: HullPaths, container_id: str) -> None:
        self.dir = join(paths.containers, container_id)
        self.bundle = join(self.dir, "bundle")
        self.rootfs = join(self.bundle, "rootfs")
        self.upper = join(self.dir, "upper")
        self.work = join(self.dir, "work")
        self.log = join(self.dir, f"{container_id}-json.log")
        self.lock = join(self.dir, "lock")
        self.shim_dir = join(paths.runroot, "shims", container_id[:12])
        self.runtime_root = paths.runtime_state


class ContainerService:
    """The engine's container verbs over SQLite, the image store and the shims."""

    def __init__(self, paths: HullPaths, db: Database | None = None) -> None:
        self.paths = paths
        self.db = db or Database(paths.db)
        self._images: ImageService | None = None
        self._foreground_rm = False
        # Image records by ID, as read during this service's life: an ID names the
        # image's content (config and layers), which never changes, and one run
        # reads it three times (create, mount, config). Tags are not read from here.
        self._image_content: dict[str, ImageRecord] = {}

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ContainerService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def images(self) -> ImageService:
        if self._images is None:
            from hull.engine.images import ImageService

            self._images = ImageService(self.paths, self.db)
        return self._images

    # ------------------------------------------------------------------ lookups

    def get(self, ref: str) -> ContainerRecord:
        """By full id, name, or unique id prefix (Docker's rules)."""
        row = self.db.execute(
            "SELECT * FROM containers WHERE id = ? OR name = ? OR name = ?",
            (ref, ref, ref.lstrip("/")),
        ).fetchone()
        if row is None and ref and all(c in "0123456789abcdef" for c in ref):
            rows = self.db.execute(
                "SELECT * FROM containers WHERE id LIKE ? LIMIT 2", (ref + "%",)
            ).fetchall()
            if len(rows) > 1:
                raise ConfigError(f"multiple containers match the id prefix {ref!r}")
            row = rows[0] if rows else None
        if row is None:
            raise NotFoundError(f"no such container: {ref}")
        return ContainerRecord.from_row(row)

    def list_containers(self, all: bool = False) -> list[ContainerRecord]:
        rows = self.db.execute("SELECT * FROM containers ORDER BY created DESC").fetchall()
        records = [ContainerRecord.from_row(r) for r in rows]
        return records if all else [r for r in records if r.state in (RUNNING, PAUSED)]

    def inspect(self, ref: str) -> dict[str, Any]:
        from hull.engine.netsetup import network_settings

        record = self.get(ref)
        doc = inspect_document(record, self.layout(record))
        doc["NetworkSettings"] = network_settings(self.db, self.paths, record.id, record.run)
        return doc

    def layout(self, record_or_id: ContainerRecord | str) -> ContainerLayout:
        cid = record_or_id if isinstance(record_or_id, str) else record_or_id.id
        return ContainerLayout(self.paths, cid)

    # ------------------------------------------------------------------ create

    def create(self, run: RunConfig) -> ContainerRecord:
        """Docker's create: resolve (or pull) the image, name, dirs, a row."""
        if run.isolation == "vm":
            from hull.engine.vmbackend import check_run_config

            check_run_config(run)
        self._check_network_exists(run)
        image = self._image_for(run)
        cid = os.urandom(32).hex()
        name = run.name or self._random_name()
        if run.name:
            check_name(run.name)
        layout = self.layout(cid)
        os.makedirs(layout.dir)
        try:
            for d in (layout.upper, layout.work, layout.rootfs):
                os.makedirs(d)
            # The lock file exists for the container's whole life; ContainerLock
            # never creates it, so a racing sweep cannot repopulate a removed dir.
            os.close(os.open(layout.lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self._write_etc_files(layout, run, cid)
            for mount in run.mounts:
                if mount.type == "volume":
                    # Anonymous volumes get their generated name now, so every start
                    # mounts the same one.
                    from hull.engine.volumes import VolumeService

                    mount.source = VolumeService(self.paths, self.db).create(mount.source)["Name"]
            with self.db.transaction() as conn:
                taken = "SELECT 1 FROM containers WHERE name = ?"
                if run.name:
                    if conn.execute(taken, (name,)).fetchone():
                        raise StateError(
                            f'the container name "/{name}" is already in use: remove it or '
                            "choose another name"
                        )
                else:
                    suffix = 0
                    while conn.execute(taken, (name,)).fetchone():
                        # A generated name taken meanwhile (parallel creates): Docker
                        # appends a digit; here a counter, under the write lock.
                        suffix += 1
                        name = f"{name.rstrip('0123456789')}{suffix}"
                conn.execute(
                    "INSERT INTO containers (id, name, image_id, image_name, run_config, state,"
                    " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        cid,
                        name,
                        image.id,
                        run.image,
                        fastjson.dumps(run.to_dict()),
                        CREATED,
                        time.time(),
                    ),
                )
        except BaseException:
            _rmtree(layout.dir)
            raise
        return self.get(cid)

    def _image_for(self, run: RunConfig) -> ImageRecord:
        image = self._resolve_image(run)
        self._remember_image(image)
        return image

    def _remember_image(self, image: ImageRecord) -> None:
        if len(self._image_content) >= 16:  # a long-lived API server: keep it small
            self._image_content.clear()
        self._image_content[image.id] = image

    def _image_content_of(self, image_id: str) -> ImageRecord | None:
        """The image's config and layers (see _image_content), None if it is gone."""
        image = self._image_content.get(image_id)
        if image is None:
            image = self.images.catalog.get(image_id)
            if image is not None:
                self._remember_image(image)
        return image

    def _resolve_image(self, run: RunConfig) -> ImageRecord:
        images = self.images
        if run.pull == "always":
            return images.pull(run.image, progress="auto")
        try:
            return images.resolve(run.image)
        except NotFoundError:
            if run.pull == "never":
                raise NotFoundError(
                    f"no such image: {run.image} (and --pull=never forbids pulling it)"
                ) from None
        return images.pull(run.image, progress="auto")

    def _random_name(self) -> str:
        for _ in range(20):
            name = f"{_pick(_ADJECTIVES)}_{_pick(_NAMES)}"
            if not self.db.execute("SELECT 1 FROM containers WHERE name = ?", (name,)).fetchone():
                return name
        return f"hull_{os.urandom(4).hex()}"

    def _check_network_exists(self, run: RunConfig) -> None:
        """Docker refuses at create a network or container to join that does not exist;
        SQL only ("bridge" is made on first use)."""
        if run.network.startswith("container:"):
            self.get(run.network.partition(":")[2])
            return
        if run.network in ("none", "host", "bridge"):
            return
        if not self.db.execute(
            "SELECT 1 FROM net_networks WHERE name = ? OR id = ?", (run.network, run.network)
        ).fetchone():
            raise NotFoundError(f"network {run.network} not found")

    def _write_etc_files(self, layout: ContainerLayout, run: RunConfig, cid: str) -> None:
        """hostname, hosts and resolv.conf as for --network none or host; a start on a
        bridge rewrites hosts and resolv.conf with the container's address."""
        from hull.engine.netsetup import hosts_text, read_host_resolv_conf, resolv_conf

        hostname = run.hostname or cid[:12]
        if run.network == "host" and not run.hostname:
            hostname = os.uname().nodename
        write_text(join(layout.dir, "hostname"), hostname + "\n")
        write_text(
            join(layout.dir, "hosts"),
            hosts_text(hostname, run.add_hosts, [], [], host_network=run.network == "host"),
        )
        write_text(
            join(layout.dir, "resolv.conf"),
            resolv_conf(read_host_resolv_conf(), run.dns, own_namespace=False),
        )

    def volume_path(self, mount: MountSpec) -> str:
        """Host dir of a named (or anonymous) volume; created on first use, as Docker does."""
        from hull.engine.volumes import VolumeService

        return str(VolumeService(self.paths, self.db).ensure(mount.source))

    # ------------------------------------------------------------------ start

    def start(
        self,
        ref: str,
        before_start: Callable[[ContainerRecord, str], None] | None = None,
        restart: bool = False,
    ) -> ContainerRecord:
        """Mount the rootfs, write config.json, hand the container to a new shim, start it.

        before_start(record, shim_dir) runs once the container is created and its
        shim listens: `hull run` attaches there so no output is missed.
        restart=True: a restart policy's start, dropped if a user stopped the
        container meanwhile (checked under the container lock, which stop takes).
        """
        record = self.get(ref)
        if record.state in (RUNNING, PAUSED):
            return record
        layout = self.layout(record)
        mounted = False
        shim = None
        networked = False
        try:
            with ContainerLock(layout):
                record = self.get(record.id)
                if record.state in (RUNNING, PAUSED):
                    return record
                if restart:
                    if record.stopped_by_user:
                        return record
                    self.db.execute(
                        "UPDATE containers SET restart_count = restart_count + 1 WHERE id = ?",
                        (record.id,),
                    )
                mounted = self.mount_rootfs(record, layout)
                if record.run.isolation == "vm":
                    from hull.engine import vmbackend

                    shim = vmbackend.start(self, record, layout, before_start)
                else:
                    warnings: list[str] = []
                    networked = True
                    plan = self._setup_network(record, layout, warnings)
                    self._write_config(record, layout, plan, warnings)
                    shim = self._spawn_shim(record, layout)
                    if before_start is not None:
                        before_start(record, layout.shim_dir)
                    from hull.runtime.container import start as runtime_start
                    from hull.runtime.state import StateStore

                    runtime_start(StateStore(str(layout.runtime_root)), record.id)
                with self.db.transaction() as conn:
                    conn.execute(
                        "UPDATE containers SET state = ?, pid = ?, shim_pid = ?, started_at = ?,"
                        " finished_at = NULL, exit_code = NULL, error = '', stopped_by_user = 0,"
                        " oom_killed = 0 WHERE id = ?",
                        (RUNNING, shim.container_pid, shim.shim_pid, time.time(), record.id),
                    )
        except BaseException as err:
            self._undo_start(record, layout, mounted, shim, networked)
            message = err.message if isinstance(err, HullError) else str(err)
            self.db.execute("UPDATE containers SET error = ? WHERE id = ?", (message, record.id))
            raise
        return self.get(record.id)

    def run_foreground(self, ref: str, interactive: bool = False, stage1_worker=None) -> int:
        """`run --rm` in the foreground without a tty: this process supervises.

        Nothing outlives the container, so no shim, no log file and no second
        interpreter are needed: the runtime runs in-process with our stdio, as
        `hull-runtime run` would (signals forwarded, exit code returned). The pid
        goes into the row before the process starts, so `hull stop`/`kill` from
        elsewhere work; if this process is killed, the container keeps running
        and the sweep records and removes it once it exits.

        stage1_worker: the container's stage 1, forked by the CLI before our own
        set-up (hull.runtime.prefork); the runtime takes it, the caller discards
        it when unused.
        """
        from hull.runtime.container import run as runtime_run
        from hull.runtime.state import StateStore

        record = self.get(ref)
        layout = self.layout(record)
        lock = ContainerLock(layout)
        locked = mounted = networked = False
        supervision = _claim_supervision(layout)  # the sweep leaves the container to us
        try:
            lock.__enter__()
            locked = True
            mounted = self.mount_rootfs(record, layout)
            warnings: list[str] = []
            networked = True
            plan = self._setup_network(record, layout, warnings)
            self._write_config(record, layout, plan, warnings)
            if not interactive:
                from hull.runtime.prefork import stdin_from_devnull

                stdin_from_devnull()

            def on_created(state: Any) -> None:
                nonlocal locked
                self.db.execute(
                    "UPDATE containers SET state = ?, pid = ?, shim_pid = 0, started_at = ?"
                    " WHERE id = ?",
                    (RUNNING, state.pid, time.time(), record.id),
                )
                lock.__exit__()
                locked = False

            code = runtime_run(
                StateStore(str(layout.runtime_root)),
                record.id,
                str(layout.bundle),
                on_created=on_created,
                stage1_worker=stage1_worker,
            )
        except BaseException as err:
            if locked:
                self._undo_start(record, layout, mounted, None, networked)
                self._runtime_delete(record.id, layout)
                lock.__exit__()
            else:
                _write_exit(layout, 255)
            if isinstance(err, HullError):
                self.db.execute(
                    "UPDATE containers SET error = ? WHERE id = ?", (err.message, record.id)
                )
            _release_supervision(supervision)  # remove() must see the container as ours no more
            self.remove(record.id, force=True, volumes=True)
            raise
        try:
            self._finish_foreground(record, layout)
        finally:
            _release_supervision(supervision)
        return code

    def _finish_foreground(self, record: ContainerRecord, layout: ContainerLayout) -> None:
        """remove() for a container this process ran to its end without a shim (a
        foreground --rm run, a container's or a VM's) and whose runtime state is gone
        already: unmount, undo the network, drop the row and the files."""
        try:
            with ContainerLock(layout):
                _detach_rootfs(layout)
                self._teardown_network(record.id)
                self.db.execute("DELETE FROM containers WHERE id = ?", (record.id,))
                _rmtree(layout.dir)
        except NotFoundError:
            return  # removed meanwhile (`hull rm -f` from elsewhere)
        _rmtree(layout.shim_dir)
        anonymous = [m.source for m in record.run.mounts if m.type == "volume" and m.source]
        if anonymous:
            from hull.engine.volumes import VolumeService

            VolumeService(self.paths, self.db).remove_anonymous(anonymous)

    def mount_rootfs(self, record: ContainerRecord, layout: ContainerLayout) -> bool:
        from hull.image.snapshots import mount_overlay

        if os.path.ismount(layout.rootfs):
            return False
        image = self._image_content_of(record.image_id)
        if image is None:
            raise NotFoundError(f"the image of container {record.name} is gone ({record.image_id})")
        lowers = _unpacked_layers(self.paths, image.diff_ids)
        if lowers is None:  # some layer still to unpack: the layer store's full path
            lowers = [
                str(d)
                for d in self.images.layer_store.ensure(
                    [layer.descriptor() for layer in image.layers], image.diff_ids
                )
            ]
        os.makedirs(layout.rootfs, exist_ok=True)
        mount_overlay(lowers, layout.upper, layout.work, layout.rootfs)
        return True

    def _image_config(self, record: ContainerRecord) -> dict[str, Any]:
        image = self._image_content_of(record.image_id)
        return (image.config if image else {}).get("config") or {}

    def _setup_network(
        self, record: ContainerRecord, layout: ContainerLayout, warnings: list[str]
    ) -> NetworkPlan:
        """The namespace to join: the container's own on a bridge (set up now), another
        container's, or none (a new empty one, or the host's with --network host)."""
        from hull.engine import netsetup

        run = record.run
        if run.network.startswith("container:"):
            target = self.get(run.network.partition(":")[2])
            if target.state not in (RUNNING, PAUSED):
                raise StateError(
                    f"cannot join the network of container {target.name}: it is not running"
                )
            target_dir = self.layout(target).dir
            for name in ("hostname", "hosts", "resolv.conf"):
                _copyfile(join(target_dir, name), join(layout.dir, name))
            return netsetup.NetworkPlan(
                netns=netsetup.joined_netns(self.paths, target.id, target.pid),
                hostname=read_text(join(target_dir, "hostname")).strip() or None,
            )
        return netsetup.setup(
            self.paths,
            self.db,
            record.id,
            record.name,
            run,
            self._image_config(record) if run.publish_all else {},
            layout.dir,
            warnings,
        )

    def _write_config(
        self,
        record: ContainerRecord,
        layout: ContainerLayout,
        plan: NetworkPlan | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        from hull.engine.spec import build_spec

        image_config = self._image_config(record)
        warnings = [] if warnings is None else warnings
        spec = build_spec(
            record.run,
            image_config,
            record.id,
            layout.dir,
            layout.rootfs,
            volume_source=self.volume_path,
            init_binary=_init_binary() if record.run.init else None,
            warnings=warnings,
            netns_path=plan.netns if plan else None,
            hostname=plan.hostname if plan else None,
        )
        for warning in warnings:
            print(f"hull: warning: {warning}", file=sys.stderr)
        _make_workdir(layout.rootfs, spec["process"].get("cwd") or "/")
        replace_text(join(layout.bundle, "config.json"), fastjson.dumps(spec))

    def _spawn_shim(
        self, record: ContainerRecord, layout: ContainerLayout, runtime: list[str] | None = None
    ) -> ShimHandle:
        from hull.engine.shim import ShimOptions, spawn_shim

        # A crash between spawn and start leaves a shim and a runtime entry behind:
        # stop that shim first so it never writes into the new one's directory.
        _kill_old_shim(layout)
        self._runtime_delete(record.id, layout)
        _rmtree(layout.shim_dir)
        run = record.run
        exit_command = None
        if not self._foreground_rm:
            exit_command = [
                sys.executable,
                "-m",
                "hull.cli.main",
                "--root",
                str(self.paths.root),
                "--runroot",
                str(self.paths.runroot),
                "container",
                "cleanup",
                record.id,
            ]
        return spawn_shim(
            ShimOptions(
                id=record.id,
                bundle=str(layout.bundle),
                runtime=runtime or _runtime_binary(),
                runtime_root=str(layout.runtime_root),
                log_path=str(layout.log),
                log_max_size=_size_opt(run.log_opts.get("max-size")),
                log_max_files=int(run.log_opts.get("max-file") or 1),
                socket_dir=str(layout.shim_dir),
                tty=run.tty,
                stdin=run.interactive,
                exit_command=exit_command,
            )
        )

    def _undo_start(
        self,
        record: ContainerRecord,
        layout: ContainerLayout,
        mounted: bool,
        shim: ShimHandle | None,
        networked: bool = False,
    ) -> None:
        if shim is not None:
            self._runtime_delete(record.id, layout, force=True)
        if networked:
            self._teardown_network(record.id)
        if mounted:
            from hull.image.snapshots import unmount

            unmount(layout.rootfs)

    def _teardown_network(self, cid: str) -> None:
        """The container's veths, ports, leases and namespace (nothing to do: no cost)."""
        from hull.engine.netsetup import teardown

        teardown(self.paths, self.db, cid)

    def _runtime_delete(self, cid: str, layout: ContainerLayout, force: bool = True) -> None:
        from hull.runtime.container import delete
        from hull.runtime.state import StateStore

        try:
            delete(StateStore(str(layout.runtime_root)), cid, force=force)
        except HullError:
            pass

    def run_vm(self, ref: str) -> int:
        """Run a created container in a microVM with its own kernel, attached.

        The image's layers (merged with overlayfs) become the VM's read-only
        erofs root disk, cached per chain ID; the process is what config.json
        would say for a container.
        """
        from hull.engine import vmbackend

        record = self.get(ref)
        layout = self.layout(record)
        image = self.images.catalog.get(record.image_id)
        if image is None:
            raise NotFoundError(f"the image of container {record.name} is gone")
        # The layers are read only to build the image's root disk (cached per chain ID)
        # and to look a user name up: mounting (and lazily unmounting, 4-250 ms under
        # load) them for every run would be waste.
        mounted = False
        supervision = _claim_supervision(layout)  # the sweep leaves the VM to us
        try:
            if not _vm_disk_cached(self.paths, image.diff_ids) or _names_a_user(record.run.user):
                mounted = self.mount_rootfs(record, layout)
            self.db.execute(
                "UPDATE containers SET state = ?, started_at = ? WHERE id = ?",
                (RUNNING, time.time(), record.id),
            )
            code = 255
            try:
                code = vmbackend.run_attached(self, record, layout)
            finally:
                if mounted:
                    _detach_rootfs(layout)
                self._teardown_network(record.id)
                self.db.execute(
                    "UPDATE containers SET state = ?, exit_code = ?, finished_at = ? WHERE id = ?",
                    (EXITED, code, time.time(), record.id),
                )
            if record.run.rm:
                self._finish_foreground(record, layout)  # no shim or runtime state to undo
        finally:
            _release_supervision(supervision)
        return code

    # ------------------------------------------------------------------ signals

    def kill(self, ref: str, signal: int = 9) -> ContainerRecord:
        record = self.get(ref)
        if record.state not in (RUNNING, PAUSED):
            raise StateError(f"container {record.name} is not running")
        if record.run.isolation == "vm":
            from hull.engine import vmbackend

            vmbackend.signal(self, record, signal)
            return record
        from hull.runtime.container import kill
        from hull.runtime.state import StateStore

        try:
            kill(StateStore(str(self.layout(record).runtime_root)), record.id, signal, False)
        except HullError as err:
            raise StateError(f"cannot kill container {record.name}: {err.message}") from None
        if signal == 9 and record.state == PAUSED:
            self.unpause(record.id)
        return record

    def stop(self, ref: str, timeout: int | None = None) -> ContainerRecord:
        """Stop signal, wait up to the timeout, then SIGKILL (Docker's stop)."""
        from hull.runtime.commands.kill import parse_signal

        record = self.get(ref)
        # The flag first: a restart policy racing with this stop (the shim's exit
        # command) re-reads it under the container lock and stands down.
        self.db.execute("UPDATE containers SET stopped_by_user = 1 WHERE id = ?", (record.id,))
        run = record.run
        if timeout is None:
            timeout = run.stop_timeout if run.stop_timeout is not None else 10
        for _ in range(3):  # a restart that won the race before the flag: stop it too
            try:
                record = self.get(record.id)
            except NotFoundError:
                return record  # an --rm container, removed by whoever saw it exit
            if record.state not in (RUNNING, PAUSED):
                break
            if record.state == PAUSED:
                self.unpause(record.id)
            try:
                self.kill(record.id, parse_signal(run.stop_signal or "SIGTERM"))
            except (StateError, NotFoundError):
                pass  # already exited (and, with --rm, removed by its supervisor)
            if self._wait_exit(record, timeout) is None:
                try:
                    self.kill(record.id, 9)
                except (StateError, NotFoundError):
                    pass
                self._wait_exit(record, 30)
            self.cleanup(record.id, from_stop=True)
        try:
            return self.get(record.id)
        except NotFoundError:
            return record

    def pause(self, ref: str) -> None:
        record = self.get(ref)
        if record.state != RUNNING:
            raise StateError(f"container {record.name} is not running")
        self._runtime_verb(record, "pause")
        self.db.execute("UPDATE containers SET state = ? WHERE id = ?", (PAUSED, record.id))

    def unpause(self, ref: str) -> None:
        record = self.get(ref)
        if record.state != PAUSED:
            raise StateError(f"container {record.name} is not paused")
        self._runtime_verb(record, "resume")
        self.db.execute("UPDATE containers SET state = ? WHERE id = ?", (RUNNING, record.id))

    def _runtime_verb(self, record: ContainerRecord, verb: str) -> None:
        if record.run.isolation == "vm":
            from hull.engine import vmbackend

            return vmbackend.pause(self, record, resume=verb == "resume")
        from hull.runtime.container import _cgroup
        from hull.runtime.state import StateStore

        state = StateStore(str(self.layout(record).runtime_root)).load(record.id)
        cg = _cgroup(state)
        cg.freeze() if verb == "pause" else cg.thaw()

    # ------------------------------------------------------------------ exit

    def _wait_exit(self, record: ContainerRecord, timeout: float | None) -> int | None:
        """The exit code once the shim recorded it (None on timeout)."""
        from hull.engine.shim import read_exit

        layout = self.layout(record)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while True:
            code = read_exit(str(layout.shim_dir))
            if code is not None:
                return code
            if not _still_supervised(record, layout):
                return read_exit(str(layout.shim_dir))
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def wait(self, ref: str) -> int:
        """Block until the container exits; its exit code (Docker's wait)."""
        record = self.get(ref)
        if record.state in (RUNNING, PAUSED):
            code = self._wait_exit(record, None)
            after = self.cleanup(record.id)  # None once --rm removed it
            if after is None or after.exit_code is None:
                return code if code is not None else 255
            record = after
        return record.exit_code if record.exit_code is not None else 0

    def cleanup(self, ref: str, from_stop: bool = False) -> ContainerRecord | None:
        """After an exit: record it, unmount, drop runtime state; --rm and restarts.

        Idempotent and safe to race: the shim's exit command, a foreground
        `hull run`, `hull stop` and the sweep may all call it.
        """
        try:
            record = self.get(ref)
        except NotFoundError:
            return None
        layout = self.layout(record)
        from hull.engine.shim import exit_error, read_exit

        try:
            lock = ContainerLock(layout).__enter__()
        except NotFoundError:
            return None  # removed meanwhile by another hull process
        with lock:
            try:
                record = self.get(record.id)
            except NotFoundError:
                return None
            if record.state not in (RUNNING, PAUSED):
                return record
            code = read_exit(str(layout.shim_dir))
            if code is None:
                if _still_supervised(record, layout):
                    return record  # still running: nothing to clean yet
                code = 255
                error = exit_error(str(layout.shim_dir)) or "the container's supervisor died"
            else:
                error = ""
            oom = self._oom_killed(record, layout)
            self._runtime_delete(record.id, layout)
            _detach_rootfs(layout)
            if record.run.isolation == "vm":
                from hull.engine import vmbackend

                vmbackend.cleanup(layout)
            try:
                self._teardown_network(record.id)
            except HullError as err:  # the sweep retries; the exit must still be recorded
                print(f"hull: warning: {err.message}", file=sys.stderr)
            with self.db.transaction() as conn:
                conn.execute(
                    "UPDATE containers SET state = ?, exit_code = ?, finished_at = ?, error = ?,"
                    " pid = 0, oom_killed = ? WHERE id = ?",
                    (EXITED, code, time.time(), error, int(oom), record.id),
                )
        record = self.get(record.id)
        if record.run.rm and not self._should_restart(record, from_stop):
            self.remove(record.id, force=True, volumes=True)
            return None
        if self._should_restart(record, from_stop):
            try:
                return self.start(record.id, restart=True)
            except HullError:
                return self.get(record.id)
        return record

    def _oom_killed(self, record: ContainerRecord, layout: ContainerLayout) -> bool:
        try:
            from hull.runtime.container import _cgroup
            from hull.runtime.state import StateStore

            state = StateStore(str(layout.runtime_root)).load(record.id)
            return bool(_cgroup(state).oom_killed())
        except (HullError, OSError):
            return False

    def _should_restart(self, record: ContainerRecord, from_stop: bool) -> bool:
        policy = record.run.restart
        if from_stop or record.stopped_by_user or policy.name == "no":
            return False
        if policy.name in ("always", "unless-stopped"):
            return True
        if policy.name == "on-failure":
            failed = (record.exit_code or 0) != 0
            return failed and (policy.max_retries <= 0 or record.restart_count < policy.max_retries)
        return False

    def reconcile(self) -> None:
        """The crash sweep: finish what dead shims and killed `hull` processes left."""
        rows = self.db.execute(
            "SELECT id FROM containers WHERE state IN (?, ?)", (RUNNING, PAUSED)
        ).fetchall()
        for row in rows:
            try:
                self.cleanup(row["id"])
            except HullError as err:
                print(
                    f"hull: warning: sweeping container {row['id'][:12]}: {err.message}",
                    file=sys.stderr,
                )
        try:
            self._sweep_network()
        except HullError as err:
            print(f"hull: warning: sweeping networks: {err.message}", file=sys.stderr)
        try:
            from hull.engine.netsetup import check_dns

            check_dns(self.paths, self.db)
        except HullError as err:
            print(f"hull: warning: embedded DNS: {err.message}", file=sys.stderr)
        if os.path.isdir(join(self.paths.runroot, "vm-pool")):  # hull.vm.pool is heavy
            try:
                from hull.vm import pool

                pool.sweep(self.paths)
            except (HullError, OSError) as err:
                print(f"hull: warning: sweeping the microVM pool: {err}", file=sys.stderr)

    def _sweep_network(self) -> None:
        """Network state of containers that are not running and that no `hull` process
        is starting (their lock is free): a start or an exit killed half way, or a
        removed container. SQL only unless there is something to undo."""
        from hull.engine import netsetup

        holders = netsetup.ids_with_network_state(self.db, self.paths)
        if not holders:
            return
        states = {
            r["id"]: r["state"]
            for r in self.db.execute("SELECT id, state FROM containers").fetchall()
        }
        stale = [
            cid
            for cid in holders
            if states.get(cid) not in (RUNNING, PAUSED) and _lock_is_free(self.layout(cid))
        ]
        if not stale:
            return
        for cid in stale:
            if cid not in states:
                self._teardown_network(cid)
                continue
            with ContainerLock(self.layout(cid)):
                now = self.db.execute("SELECT state FROM containers WHERE id = ?", (cid,))
                row = now.fetchone()
                if row is not None and row["state"] not in (RUNNING, PAUSED):
                    self._teardown_network(cid)
        # Every container that exists counts as live here: one that is starting right
        # now holds rows already, and only the lock-checked ones above were stale.
        live = [r["id"] for r in self.db.execute("SELECT id FROM containers").fetchall()]
        netsetup.network_service(self.paths, self.db).sweep(live)

    # ------------------------------------------------------------------ remove

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> str:
        record = self.get(ref)
        if record.state in (RUNNING, PAUSED):
            if not force:
                raise StateError(
                    f"cannot remove container {record.name}: it is {record.state}; "
                    "stop it first or use --force"
                )
            self.db.execute("UPDATE containers SET stopped_by_user = 1 WHERE id = ?", (record.id,))
            try:
                self.kill(record.id, 9)
            except StateError:
                pass
            self._wait_exit(record, 30)
            self.cleanup(record.id, from_stop=True)
            try:
                record = self.get(record.id)
            except NotFoundError:
                return record.id
        layout = self.layout(record)
        _kill_old_shim(layout)
        if record.run.isolation == "vm":  # a VM created but never started: end it now
            from hull.engine import vmbackend

            vmbackend.cleanup(layout)
        self._runtime_delete(record.id, layout)
        try:
            with ContainerLock(layout):
                self._teardown_network(record.id)
        except NotFoundError:
            pass  # its directory is already gone
        from hull.image.snapshots import unmount

        unmount(layout.rootfs)
        _rmtree(layout.shim_dir)
        # The row goes first, under the lock: a racing cleanup waits, then finds
        # no row and stands down instead of touching the directory.
        try:
            with ContainerLock(layout):
                self.db.execute("DELETE FROM containers WHERE id = ?", (record.id,))
                _rmtree(layout.dir)
        except NotFoundError:
            self.db.execute("DELETE FROM containers WHERE id = ?", (record.id,))
            _rmtree(layout.dir)
        if volumes:
            from hull.engine.volumes import VolumeService

            VolumeService(self.paths, self.db).remove_anonymous(
                [m.source for m in record.run.mounts if m.type == "volume" and m.source]
            )
        return record.id


def command_of(record: ContainerRecord) -> list[str]:
    """The process args: from the last config.json, else what run asked for."""
    return list(record.run.entrypoint or []) + list(record.run.command or [])


def _rfc3339(ts: float | None) -> str:
    if not ts:
        return "0001-01-01T00:00:00Z"
    frac = int((ts % 1) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{frac:09d}Z"


def inspect_document(record: ContainerRecord, layout: ContainerLayout) -> dict[str, Any]:
    """`docker inspect` of a container, the fields tools read most."""
    run = record.run
    args: list[str] = []
    try:
        spec = fastjson.loads(read_text(join(layout.bundle, "config.json")))
        args = spec["process"]["args"]
    except (OSError, ValueError, KeyError):
        args = command_of(record)
    binds = [
        f"{m.source}:{m.target}" + (":ro" if m.readonly else "")
        for m in run.mounts
        if m.type in ("bind", "volume")
    ]
    nano_cpus = int(run.cpus * 1e9) if run.cpus else 0
    return {
        "Id": record.id,
        "Created": _rfc3339(record.created),
        "Path": args[0] if args else "",
        "Args": args[1:],
        "State": {
            "Status": record.state,
            "Running": record.state in (RUNNING, PAUSED),
            "Paused": record.state == PAUSED,
            "Restarting": False,
            "OOMKilled": record.oom_killed,
            "Dead": record.state == DEAD,
            "Pid": record.pid if record.state in (RUNNING, PAUSED) else 0,
            "ExitCode": record.exit_code or 0,
            "Error": record.error,
            "StartedAt": _rfc3339(record.started_at),
            "FinishedAt": _rfc3339(record.finished_at),
        },
        "Image": record.image_id,
        "ResolvConfPath": join(layout.dir, "resolv.conf"),
        "HostnamePath": join(layout.dir, "hostname"),
        "HostsPath": join(layout.dir, "hosts"),
        "LogPath": layout.log,
        "Name": "/" + record.name,
        "RestartCount": record.restart_count,
        "Driver": "overlay",
        "Platform": "linux",
        "HostConfig": {
            "Binds": binds or None,
            "LogConfig": {"Type": "json-file", "Config": dict(run.log_opts)},
            "NetworkMode": run.network,
            "PortBindings": port_bindings(run.ports),
            "PublishAllPorts": run.publish_all,
            "Dns": list(run.dns),
            "ExtraHosts": list(run.add_hosts) or None,
            "RestartPolicy": {
                "Name": run.restart.name,
                "MaximumRetryCount": run.restart.max_retries,
            },
            "AutoRemove": run.rm,
            "CapAdd": run.cap_add or None,
            "CapDrop": run.cap_drop or None,
            "Privileged": run.privileged,
            "ReadonlyRootfs": run.read_only,
            "SecurityOpt": run.security_opt or None,
            "Memory": run.memory or 0,
            "MemorySwap": run.memory_swap or 0,
            "NanoCpus": nano_cpus,
            "CpuShares": run.cpu_shares or 0,
            "CpusetCpus": run.cpuset_cpus or "",
            "PidsLimit": run.pids_limit,
            "Ulimits": run.ulimits or None,
            "Init": run.init,
            "Isolation": run.isolation,
        },
        "Mounts": [
            {
                "Type": m.type,
                "Name": m.source if m.type == "volume" else "",
                "Source": m.source or "",
                "Destination": m.target,
                "RW": not m.readonly,
            }
            for m in run.mounts
        ],
        "Config": {
            "Hostname": run.hostname or record.id[:12],
            "User": run.user or "",
            "Tty": run.tty,
            "OpenStdin": run.interactive,
            "Env": list(run.env),
            "Cmd": run.command,
            "Image": record.image_name,
            "WorkingDir": run.workdir or "",
            "Entrypoint": run.entrypoint,
            "Labels": dict(run.labels),
            "StopSignal": run.stop_signal or "SIGTERM",
            "StopTimeout": run.stop_timeout,
        },
        "NetworkSettings": {"Networks": {}, "Ports": {}},
    }


class ContainerLock:
    """flock on the container's lock file: one engine at a time changes a container."""

    def __init__(self, layout: ContainerLayout) -> None:
        self.path = layout.lock
        self.fd = -1

    def __enter__(self) -> ContainerLock:
        import fcntl

        if self.fd >= 0:
            return self  # already held (entered once by hand, then used in `with`)
        # Never create the container's directory: if it is gone, so is the
        # container (a concurrent rm), and recreating it would leak it.
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            container_dir = os.path.dirname(self.path)
            raise NotFoundError(f"no such container: {os.path.basename(container_dir)}") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
        self.fd = -1


def port_bindings(ports: list[str]) -> dict[str, list[dict[str, str]]]:
    """HostConfig.PortBindings: what -p asked for (host port "" when left to Hull)."""
    if not ports:
        return {}
    from hull.net.ports import ANY_IP, parse_port_specs

    bindings: dict[str, list[dict[str, str]]] = {}
    for spec in parse_port_specs(ports):
        bindings.setdefault(f"{spec.container_port}/{spec.proto}", []).append(
            {
                "HostIp": "" if spec.host_ip == ANY_IP else spec.host_ip,
                "HostPort": str(spec.host_port) if spec.host_port else "",
            }
        )
    return bindings


def _lock_is_free(layout: ContainerLayout) -> bool:
    """No `hull` process holds the container's lock (none is starting or cleaning it)."""
    from hull.flocks import held_elsewhere

    try:
        fd = os.open(layout.lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    return not held_elsewhere(fd)


# struct flock for F_OFD_SETLK/GETLK: short l_type, short l_whence, (pad), off_t l_start,
# off_t l_len, pid_t l_pid, (pad): 32 bytes, all zero but l_type. Built by hand: `struct`
# is one more extension module to load on `hull run`'s path.
_FLOCK_SIZE = 32
_F_RDLCK, _F_WRLCK, _F_UNLCK = 0, 1, 2


def _flock(l_type: int) -> bytes:
    """A whole-file lock request (l_start 0, l_len 0, l_pid 0 as OFD locks want)."""
    return l_type.to_bytes(2, sys.byteorder) + bytes(_FLOCK_SIZE - 2)


def _claim_supervision(layout: ContainerLayout) -> int:
    """Mark the container as supervised by this process (a foreground run, an
    attached VM): an open-file-description lock on its lock file, which the sweep
    tests (_supervised). OFD locks are apart from ContainerLock's flock, survive
    closing other fds of the file, and die with the process, kill -9 included.
    Returns the fd to close when supervision ends (-1 if the container is gone)."""
    import fcntl

    try:
        fd = os.open(layout.lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(_F_WRLCK))
    return fd


def _release_supervision(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def _still_supervised(record: ContainerRecord, layout: ContainerLayout) -> bool:
    """The container runs, or something still looks after it: its shim, its process,
    or the `hull` process that runs it in the foreground and will finish it."""
    from hull.engine.shim import shim_alive

    return shim_alive(str(layout.shim_dir)) or _pid_alive(record.pid) or _supervised(layout)


def _supervised(layout: ContainerLayout) -> bool:
    """A live `hull` process supervises the container itself (_claim_supervision)."""
    import fcntl

    try:
        fd = os.open(layout.lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(_F_RDLCK))
    finally:
        os.close(fd)
    return int.from_bytes(answer[:2], sys.byteorder) != _F_UNLCK  # held by someone


def _detach_rootfs(layout: ContainerLayout) -> None:
    """Lazy unmount: the exited container's dying mount namespace may still pin
    the overlay, and a plain umount would wait for its teardown (20+ ms)."""
    from hull.runtime.linux import syscalls

    try:
        syscalls.umount2(str(layout.rootfs), syscalls.MNT_DETACH)
    except OSError:
        pass  # not mounted


def _unpacked_layers(paths: HullPaths, diff_ids: list[str]) -> list[str] | None:
    """The diff dirs of an image's layers if all are unpacked, else None.

    LayerStore.ensure says the same, but importing the unpacker (tarfile,
    subprocess, threads) costs `hull run` ~8 ms when there is nothing to unpack.
    """
    from hull.image.layer_paths import layer_dir, layer_is_complete
    from hull.oci.image import chain_ids

    dirs = []
    for chain_id in chain_ids(diff_ids):
        if not layer_is_complete(paths.root, chain_id):
            return None
        dirs.append(join(layer_dir(paths.root, chain_id), "diff"))
    return dirs


def _vm_disk_cached(paths: HullPaths, diff_ids: list[str]) -> bool:
    """The image's microVM root disk is built already (hull.vm.rootdisk names it)."""
    if not diff_ids:
        return False
    from hull.oci.image import chain_ids
    from hull.vm.rootdisk import root_disk_path

    return os.path.isfile(root_disk_path(paths.vm, chain_ids(diff_ids)[-1]))


def _names_a_user(user: str | None) -> bool:
    """-u NAME or -u UID:GROUPNAME: resolving it reads the image's /etc files."""
    return bool(user) and not all(part.isdigit() for part in (user or "").split(":"))


def _pick(words: tuple[str, ...]) -> str:
    """A random word (`secrets` costs ~4 ms to import on `hull run`'s path)."""
    return words[int.from_bytes(os.urandom(2), "big") % len(words)]


def _rmtree(path: str) -> None:
    """shutil.rmtree(path, ignore_errors=True) without importing shutil (and with
    it bz2, lzma and zlib: ~2 ms of `hull run`). Symlinks are unlinked, never followed."""
    for parent, dirs, files in os.walk(path, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(parent, name))
            except OSError:
                pass
        for name in dirs:
            sub = os.path.join(parent, name)
            try:
                if os.path.islink(sub):
                    os.unlink(sub)
                else:
                    os.rmdir(sub)
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _copyfile(src: str, dst: str) -> None:
    import shutil

    shutil.copyfile(src, dst)


def _write_exit(layout: ContainerLayout, code: int) -> None:
    """Record an exit where the shim would (shim.EXIT_FILE), for cleanup to read."""
    try:
        os.makedirs(layout.shim_dir, exist_ok=True)
        replace_text(join(layout.shim_dir, "exit"), f"{code}\n")
    except OSError:
        pass  # the directory is gone: the container was removed meanwhile


def _kill_old_shim(layout: ContainerLayout) -> None:
    from hull.engine.shim import shim_alive

    if not shim_alive(layout.shim_dir):
        return
    try:
        pid = int(read_text(join(layout.shim_dir, "shim.pid")).strip())
        os.kill(pid, 9)
    except (OSError, ValueError):
        return
    for _ in range(200):
        if not _pid_alive(pid):
            return
        time.sleep(0.005)


def _make_workdir(rootfs: str, cwd: str) -> None:
    """Docker creates a missing working directory; resolved inside the rootfs only."""
    from hull.runtime.linux.rootfs import open_in_root

    rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(open_in_root(rootfd, cwd, "dir"))
    except OSError as err:
        raise HullError(f"cannot create the working directory {cwd}: {err.strerror}") from None
    finally:
        os.close(rootfd)


def check_name(name: str) -> None:
    ok = name[:1].isalnum() and all(c.isalnum() or c in "_.-" for c in name) and name.isascii()
    if not ok:
        raise ConfigError(
            f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3] != b"Z"


def _runtime_binary() -> str:
    launcher = join(os.path.dirname(sys.executable), "hull-runtime")
    if os.path.exists(launcher):
        return launcher
    import shutil

    found = shutil.which("hull-runtime")
    if found:
        return found
    raise HullError("hull-runtime is not installed: run scripts/setup")


def _init_binary() -> str:
    for candidate in ("/usr/bin/catatonit", "/usr/libexec/catatonit/catatonit", "/usr/bin/tini"):
        if os.path.exists(candidate):
            return candidate
    raise HullError("--init needs catatonit or tini (apt-get install catatonit)")


def _size_opt(value: str | None) -> int | None:
    if not value:
        return None
    from hull.runtime.commands.update import parse_bytes

    return parse_bytes(value)
