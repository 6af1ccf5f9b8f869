"""The state database's migrations, and image naming: tags, resolution, removal rules."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from hull.engine.db import MIGRATIONS, Database, image_in_use, schema_version
from hull.engine.images import (
    ImageCatalog,
    ImageRecord,
    ImageService,
    LayerRecord,
    parse_tag,
    resolve,
)
from hull.errors import ConfigError, NotFoundError, StateError
from hull.oci.reference import parse_reference
from hull.paths import HullPaths


def _id(prefix: str) -> str:
    return "sha256:" + (prefix + "0" * 64)[:64]


def _record(image_id: str) -> ImageRecord:
    layer = LayerRecord(_id("aa"), "application/vnd.oci.image.layer.v1.tar", 10, _id("bb"), 20)
    return ImageRecord(
        id=image_id,
        manifest_digest=_id("ff" + image_id[7:13]),
        manifest_media_type="application/vnd.oci.image.manifest.v1+json",
        index_digest=None,
        size=20,
        created="1970-01-01T00:00:00Z",
        platform="linux/amd64",
        config={"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]}},
        layers=[layer],
        added=time.time(),
    )


def _add(catalog: ImageCatalog, image_id: str, *tags: str) -> None:
    with catalog.db.transaction():
        catalog.put(_record(image_id))
        for tag in tags:
            catalog.set_tag(parse_tag(tag), image_id)


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "hull.db")
    yield database
    database.close()


@pytest.fixture
def catalog(db: Database) -> ImageCatalog:
    return ImageCatalog(db)


# ------------------------------------------------------------------ migrations


def test_migrations_create_the_schema(db: Database) -> None:
    for table in ("schema_version", "images", "tags", "image_digests"):
        assert db.table_exists(table), table
    assert schema_version(db.conn) == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_reopening_applies_nothing_twice(tmp_path: Path) -> None:
    Database(tmp_path / "hull.db").close()
    with Database(tmp_path / "hull.db") as again:
        rows = again.execute("SELECT version, name FROM schema_version").fetchall()
    assert [tuple(r) for r in rows] == [(i + 1, name) for i, (name, _) in enumerate(MIGRATIONS)]


def test_a_failing_migration_leaves_the_previous_schema(tmp_path: Path) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        Database(tmp_path / "hull.db", migrations=[*MIGRATIONS, ("broken", broken)])
    with Database(tmp_path / "hull.db") as db:
        assert schema_version(db.conn) == len(MIGRATIONS)
        assert not db.table_exists("half_done")


def test_a_later_migration_adds_tables(tmp_path: Path) -> None:
    def networks(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE networks (name TEXT PRIMARY KEY)")

    Database(tmp_path / "hull.db").close()
    with Database(tmp_path / "hull.db", migrations=[*MIGRATIONS, ("networks", networks)]) as db:
        assert db.table_exists("networks")
        assert schema_version(db.conn) == len(MIGRATIONS) + 1


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Database(tmp_path / "hull.db", migrations=[*MIGRATIONS, ("future", lambda c: None)]).close()
    with pytest.raises(StateError, match="newer than this hull"):
        Database(tmp_path / "hull.db")


def _add_container(db: Database, cid: str, image_id: str) -> None:
    db.execute(
        "INSERT INTO containers (id, name, image_id, image_name, run_config, state, created)"
        " VALUES (?, ?, ?, 'busybox', '{}', 'created', 0)",
        (cid, cid, image_id),
    )


def test_image_in_use_follows_the_containers_table(db: Database, catalog: ImageCatalog) -> None:
    _add(catalog, _id("1234"), "busybox")
    assert image_in_use(db.conn, _id("1234")) is False  # no container uses it yet
    _add_container(db, "c1", _id("1234"))
    assert db.image_in_use(_id("1234")) is True


def test_tags_go_with_their_image(db: Database, catalog: ImageCatalog) -> None:
    _add(catalog, _id("1234"), "busybox", "other:1")
    with db.transaction():
        catalog.delete(_id("1234"))
    assert db.execute("SELECT COUNT(*) FROM tags").fetchone()[0] == 0


def test_a_tag_is_unique_and_moves(catalog: ImageCatalog) -> None:
    _add(catalog, _id("1111"), "busybox")
    _add(catalog, _id("2222"), "busybox")
    assert catalog.by_tag(parse_reference("busybox")) == _id("2222")
    old = catalog.get(_id("1111"))
    assert old is not None and old.tags == []


# ------------------------------------------------------------------ resolution


@pytest.mark.parametrize(
    "name",
    [
        "busybox",
        "busybox:latest",
        "library/busybox",
        "docker.io/library/busybox:latest",
        "index.docker.io/library/busybox",
        "sha256:abcdef12",
        "abcdef12",
        "abc",
        _id("abcdef12"),
        _id("abcdef12")[7:],
    ],
)
def test_resolve_finds_by_name_id_and_prefix(catalog: ImageCatalog, name: str) -> None:
    _add(catalog, _id("abcdef12"), "busybox")
    _add(catalog, _id("99"), "other:1")
    assert resolve(catalog, name).image.id == _id("abcdef12")


def test_resolve_reports_which_tag_matched(catalog: ImageCatalog) -> None:
    _add(catalog, _id("ab"), "busybox", "busybox:1.36")
    assert str(resolve(catalog, "busybox:1.36").tag) == "docker.io/library/busybox:1.36"
    assert resolve(catalog, "ab").tag is None


@pytest.mark.parametrize("name", ["nope", "busybox:other", "sha256:zz", "abcdef1234x", "Upper"])
def test_resolve_unknown_is_a_clear_not_found(catalog: ImageCatalog, name: str) -> None:
    _add(catalog, _id("abcdef12"), "busybox")
    with pytest.raises(NotFoundError) as err:
        resolve(catalog, name)
    assert err.value.message == f"no such image: {name}"


def test_an_ambiguous_prefix_is_refused(catalog: ImageCatalog) -> None:
    _add(catalog, _id("abc1"), "one")
    _add(catalog, _id("abc2"), "two")
    with pytest.raises(ConfigError, match="ambiguous"):
        resolve(catalog, "abc")
    assert resolve(catalog, "abc2").image.id == _id("abc2")


def test_a_tag_that_looks_like_hex_beats_an_id_prefix(catalog: ImageCatalog) -> None:
    _add(catalog, _id("beef"), "other")
    _add(catalog, _id("1111"), "beef")
    assert resolve(catalog, "beef").image.id == _id("1111")


def test_resolve_by_repo_digest(catalog: ImageCatalog) -> None:
    _add(catalog, _id("ab"), "busybox")
    manifest = _record(_id("ab")).manifest_digest
    with catalog.db.transaction():
        catalog.add_digest(parse_reference(f"busybox@{manifest}"), _id("ab"))
    found = resolve(catalog, f"busybox@{manifest}")
    assert found.image.id == _id("ab") and found.digest is not None
    with pytest.raises(NotFoundError):
        resolve(catalog, f"other@{manifest}")


def test_parse_tag_refuses_digests() -> None:
    with pytest.raises(ConfigError):
        parse_tag("busybox@" + _id("ab"))
    assert str(parse_tag("x/y")) == "docker.io/x/y:latest"


# ------------------------------------------------------------------ removal rules


@pytest.fixture
def service(tmp_path: Path):
    svc = ImageService(HullPaths(tmp_path / "lib", tmp_path / "run"))
    yield svc
    svc.close()


def test_rmi_of_one_tag_only_untags(service: ImageService) -> None:
    _add(service.catalog, _id("ab"), "busybox", "mine:1")
    assert service.remove("mine:1") == [{"Untagged": "mine:1"}]
    assert [r.familiar() for r in service.resolve("busybox").tags] == ["busybox:latest"]
    events = service.remove("busybox")
    assert events == [{"Untagged": "busybox:latest"}, {"Deleted": _id("ab")}]
    assert service.catalog.all() == []


def test_rmi_by_id_with_several_repositories_needs_force(service: ImageService) -> None:
    _add(service.catalog, _id("ab"), "busybox", "mine:1")
    with pytest.raises(StateError, match="must be forced"):
        service.remove("ab")
    assert service.catalog.get(_id("ab")) is not None
    events = service.remove("ab", force=True)
    assert {"Deleted": _id("ab")} in events and len(events) == 3


def test_rmi_of_an_image_in_use(service: ImageService) -> None:
    _add(service.catalog, _id("ab"), "busybox")
    _add_container(service.db, "c1", _id("ab"))
    with pytest.raises(StateError, match="container"):
        service.remove("busybox")
    with pytest.raises(StateError, match="container"):
        service.remove("ab")
    # Forced: the name goes, the image stays (dangling) for the container's sake.
    assert service.remove("busybox", force=True) == [{"Untagged": "busybox:latest"}]
    image = service.catalog.get(_id("ab"))
    assert image is not None and image.tags == []


def test_prune_removes_dangling_then_all(service: ImageService) -> None:
    _add(service.catalog, _id("aa"), "busybox")
    _add(service.catalog, _id("bb"))
    report = service.prune()
    assert report["ImagesDeleted"] == [{"Deleted": _id("bb")}]
    assert service.prune()["ImagesDeleted"] is None
    report = service.prune(all=True)
    assert report["ImagesDeleted"] == [{"Untagged": "busybox:latest"}, {"Deleted": _id("aa")}]
    assert report["SpaceReclaimed"] == 20


def test_a_transaction_rolls_back_on_error(db: Database) -> None:
    db.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("boom")
    with db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (2)")
    assert [r[0] for r in db.execute("SELECT x FROM t")] == [2]
