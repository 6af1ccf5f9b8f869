"""Named volumes: directories under <root>/volumes/<name>/_data, rows in SQLite.

Docker's local driver semantics: `-v name:/path` creates the volume on first
use; `-v /path` makes an anonymous one, removed with the container by --rm
or `rm -v`; a volume in use by any container cannot be removed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hull.engine.db import Database
from hull.errors import ConfigError, NotFoundError, StateError
from hull.paths import HullPaths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _check_name(name: str) -> None:
    ok = (
        len(name) >= 2
        and name[0].isalnum()
        and all(c.isalnum() or c in "_.-" for c in name)
        and name.isascii()
    )
    if not ok:
        raise ConfigError(
            f"invalid volume name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )


class VolumeService:
    def __init__(self, paths: HullPaths, db: Database | None = None) -> None:
        self.paths = paths
        self.db = db if db is not None else Database(paths.db)

    def _dir(self, name: str) -> Path:
        return Path(self.paths.root) / "volumes" / name / "_data"

    def create(
        self, name: str | None = None, labels: dict[str, str] | None = None, anonymous: bool = False
    ) -> dict[str, Any]:
        if name is None:
            name = os.urandom(32).hex()  # not `secrets`: ~4 ms on `hull run`'s path
            anonymous = True
        _check_name(name)
        row = self.db.execute("SELECT * FROM volumes WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return self._doc(row)
        data = self._dir(name)
        data.mkdir(parents=True, exist_ok=True)
        self.db.execute(
            "INSERT OR IGNORE INTO volumes (name, mountpoint, labels, anonymous, created)"
            " VALUES (?, ?, ?, ?, ?)",
            (name, str(data), json.dumps(labels or {}), int(anonymous), time.time()),
        )
        return self.inspect(name)

    def ensure(self, name: str | None) -> Path:
        """The volume's data dir, creating it (anonymous when name is None)."""
        doc = self.create(name)
        return Path(doc["Mountpoint"])

    def inspect(self, name: str) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM volumes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no such volume: {name}")
        return self._doc(row)

    def list_volumes(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM volumes ORDER BY name").fetchall()
        return [self._doc(r) for r in rows]

    def users(self, name: str) -> list[str]:
        """Names of containers that mount this volume."""
        if not self.db.table_exists("containers"):
            return []
        names = []
        for row in self.db.execute("SELECT name, run_config FROM containers").fetchall():
            mounts = json.loads(row["run_config"]).get("mounts") or []
            if any(m.get("type") == "volume" and m.get("source") == name for m in mounts):
                names.append(row["name"])
        return names

    def remove(self, name: str, force: bool = False) -> None:
        self.inspect(name)
        users = self.users(name)
        if users and not force:
            raise StateError(f"volume {name} is in use by container(s) {', '.join(users)}")
        self.db.execute("DELETE FROM volumes WHERE name = ?", (name,))
        import shutil

        shutil.rmtree(self._dir(name).parent, ignore_errors=True)

    def remove_anonymous(self, names: list[str]) -> None:
        for name in names:
            row = self.db.execute(
                "SELECT anonymous FROM volumes WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row["anonymous"] and not self.users(name):
                self.remove(name)

    def prune(self, all: bool = False) -> list[str]:
        """Unused volumes: anonymous ones, or every unused one with all=True (Docker 23+)."""
        removed: list[str] = []
        for row in self.db.execute("SELECT name, anonymous FROM volumes").fetchall():
            if (all or row["anonymous"]) and not self.users(row["name"]):
                self.remove(row["name"])
                removed.append(row["name"])
        return removed

    def _doc(self, row: Any) -> dict[str, Any]:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["created"]))
        return {
            "CreatedAt": created,
            "Driver": row["driver"],
            "Labels": json.loads(row["labels"]) or None,
            "Mountpoint": row["mountpoint"],
            "Name": row["name"],
            "Options": None,
            "Scope": "local",
        }
