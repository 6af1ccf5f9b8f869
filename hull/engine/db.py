"""The one SQLite file (HullPaths.db) that holds the engine's state.

WAL so readers (`hull images`, `hull ps`) never wait on a writer, foreign keys so
a tag cannot outlive its image, and a busy timeout so two `hull` processes queue
rather than fail. The schema grows by appending to MIGRATIONS: each function runs
once, in order, inside the transaction that records its version, so a crash
mid-migration leaves the previous schema intact.
"""

from __future__ import annotations

import os
import time

from hull.errors import HullError, StateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable

    Migration = Callable[[sqlite3.Connection], None]
else:
    # sqlite3's C half: the package adds only date/time adapters (deprecated since
    # Python 3.12) and, for them, `datetime`: ~1 ms of every `hull run`.
    import _sqlite3 as sqlite3

BUSY_TIMEOUT_MS = 30_000


def _images_v1(conn: sqlite3.Connection) -> None:
    """Images keyed by config digest (Docker's image ID), their tags and repo digests."""
    run_script(
        conn,
        """
        CREATE TABLE images (
            id                  TEXT PRIMARY KEY,   -- config digest, sha256:...
            manifest_digest     TEXT NOT NULL,
            manifest_media_type TEXT NOT NULL,
            index_digest        TEXT,               -- set when pulled through an index
            size                INTEGER NOT NULL,   -- unpacked bytes, as `docker images`
            created             TEXT,               -- the config's created timestamp
            platform            TEXT NOT NULL,      -- os/arch[/variant]
            config              TEXT NOT NULL,      -- the config JSON, cached
            layers              TEXT NOT NULL,      -- JSON: [{digest, mediaType, size,
                                                    --   diffId, unpackedSize}]
            added               REAL NOT NULL       -- when this engine recorded it
        );
        CREATE TABLE tags (
            repository TEXT NOT NULL,               -- docker.io/library/busybox
            tag        TEXT NOT NULL,
            image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            PRIMARY KEY (repository, tag)
        );
        CREATE INDEX tags_by_image ON tags(image_id);
        CREATE TABLE image_digests (
            repository TEXT NOT NULL,
            digest     TEXT NOT NULL,               -- manifest (or index) digest
            image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            PRIMARY KEY (repository, digest)
        );
        CREATE INDEX image_digests_by_image ON image_digests(image_id);
        """,
    )


def _containers_v1(conn: sqlite3.Connection) -> None:
    """Containers (their run config as JSON, lifecycle state) and named volumes."""
    run_script(
        conn,
        """
        CREATE TABLE containers (
            id              TEXT PRIMARY KEY,       -- 64 hex
            name            TEXT NOT NULL UNIQUE,
            image_id        TEXT NOT NULL,          -- config digest (may outlive a forced rmi)
            image_name      TEXT NOT NULL,          -- as the user gave it
            run_config      TEXT NOT NULL,          -- RunConfig JSON
            state           TEXT NOT NULL,          -- created running paused exited dead
            pid             INTEGER NOT NULL DEFAULT 0,
            shim_pid        INTEGER NOT NULL DEFAULT 0,
            exit_code       INTEGER,
            error           TEXT NOT NULL DEFAULT '',
            created         REAL NOT NULL,
            started_at      REAL,
            finished_at     REAL,
            restart_count   INTEGER NOT NULL DEFAULT 0,
            stopped_by_user INTEGER NOT NULL DEFAULT 0,
            oom_killed      INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX containers_by_image ON containers(image_id);
        CREATE TABLE volumes (
            name       TEXT PRIMARY KEY,
            driver     TEXT NOT NULL DEFAULT 'local',
            mountpoint TEXT NOT NULL,
            labels     TEXT NOT NULL DEFAULT '{}',
            anonymous  INTEGER NOT NULL DEFAULT 0,
            created    REAL NOT NULL
        );
        """,
    )


def _net_v1(conn: sqlite3.Connection) -> None:
    """Networks, IPAM leases, endpoints (a container's veth on a network) and published
    ports, kept by hull.net. Endpoint and port rows are written before the kernel state
    they describe, so a crash leaves rows that the sweep can undo."""
    run_script(
        conn,
        """
        CREATE TABLE net_networks (
            id       TEXT PRIMARY KEY,              -- 64 hex
            name     TEXT NOT NULL UNIQUE,
            bridge   TEXT NOT NULL UNIQUE,          -- Linux bridge device
            subnet   TEXT NOT NULL,                 -- 10.88.0.0/16
            gateway  TEXT NOT NULL,                 -- the bridge's own address
            internal INTEGER NOT NULL DEFAULT 0,    -- no egress, no NAT
            labels   TEXT NOT NULL DEFAULT '{}',
            created  REAL NOT NULL
        );
        CREATE TABLE net_leases (
            network_id   TEXT NOT NULL REFERENCES net_networks(id) ON DELETE CASCADE,
            ip           TEXT NOT NULL,
            container_id TEXT NOT NULL,
            created      REAL NOT NULL,
            PRIMARY KEY (network_id, ip),
            UNIQUE (network_id, container_id)
        );
        CREATE TABLE net_endpoints (
            container_id TEXT NOT NULL,
            network_id   TEXT NOT NULL REFERENCES net_networks(id) ON DELETE CASCADE,
            host_ifname  TEXT NOT NULL UNIQUE,      -- the host end of the veth pair
            ifname       TEXT NOT NULL,             -- inside the container: eth0, eth1...
            mac          TEXT NOT NULL,
            ip           TEXT NOT NULL,
            aliases      TEXT NOT NULL DEFAULT '[]',
            netns_path   TEXT NOT NULL,
            created      REAL NOT NULL,
            PRIMARY KEY (container_id, network_id)
        );
        CREATE TABLE net_ports (
            proto          TEXT NOT NULL,           -- tcp | udp
            host_ip        TEXT NOT NULL,           -- 0.0.0.0 = every host address
            host_port      INTEGER NOT NULL,
            container_id   TEXT NOT NULL,
            container_ip   TEXT NOT NULL,
            container_port INTEGER NOT NULL,
            PRIMARY KEY (proto, host_ip, host_port)
        );
        CREATE INDEX net_ports_by_container ON net_ports(container_id);
        """,
    )


# Append only; never reorder or edit a migration that has shipped.
MIGRATIONS: list[tuple[str, Migration]] = [
    ("images", _images_v1),
    ("containers", _containers_v1),
    ("net", _net_v1),
]


class Database:
    """A connection to hull.db with the schema brought up to date on open."""

    def __init__(self, path: str, migrations: list[tuple[str, Migration]] | None = None) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN ourselves so transactions are explicit.
            self.conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            raise HullError(f"cannot open the state database {path}: {e}") from e
        migrate(self.conn, MIGRATIONS if migrations is None else migrations)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> Transaction:
        """BEGIN IMMEDIATE .. COMMIT: take the write lock up front, roll back on any error."""
        return Transaction(self.conn)

    def execute(
        self, sql: str, params: tuple[object, ...] | dict[str, object] = ()
    ) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def table_exists(self, name: str) -> bool:
        return table_exists(self.conn, name)

    def image_in_use(self, image_id: str) -> bool:
        return image_in_use(self.conn, image_id)


class Transaction:
    """`with db.transaction() as conn:` (a class rather than @contextmanager, whose
    contextlib costs `hull run` the collections and functools imports)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def schema_version(conn: sqlite3.Connection) -> int:
    if not table_exists(conn, "schema_version"):
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, migrations: list[tuple[str, Migration]]) -> int:
    """Apply the migrations this file has not seen yet; return the resulting version."""
    if schema_version(conn) == len(migrations):
        return len(migrations)  # the common case: no write lock taken at all
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
    )
    while True:
        with Transaction(conn):  # a return commits, an exception rolls back
            current = schema_version(conn)
            if current > len(migrations):
                raise StateError(
                    f"the state database is at schema version {current}, newer than this "
                    f"hull ({len(migrations)}): upgrade hull"
                )
            if current == len(migrations):
                return current
            name, migration = migrations[current]
            migration(conn)
            conn.execute(
                "INSERT INTO schema_version (version, name, applied) VALUES (?, ?, ?)",
                (current + 1, name, time.time()),
            )


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run several statements inside the caller's transaction.

    sqlite3's executescript() would COMMIT first, breaking the migration's atomicity.
    """
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement.strip()!r}")


def table_exists(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def image_in_use(conn: sqlite3.Connection, image_id: str) -> bool:
    """Whether a container still needs this image (so its layers must stay).

    The containers table arrives with a later migration; until then nothing can
    use an image. It is expected to have an `image_id` column.
    """
    if not table_exists(conn, "containers"):
        return False
    row = conn.execute(
        "SELECT 1 FROM containers WHERE image_id = ? LIMIT 1", (image_id,)
    ).fetchone()
    return row is not None
