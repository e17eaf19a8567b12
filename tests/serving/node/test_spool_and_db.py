"""The spool (durable queue) and the results database: durability and replay order, a full spool that writes
nothing, schema migrations, results idempotent by SOP Instance UID, the worklist's filters and paging, and the
delivery states that keep a report from going twice. The database tests run on SQLite and, where Debian's
PostgreSQL is installed, on a real PostgreSQL server that the test starts (tests/postgres.py)."""
from __future__ import annotations

import os
import sqlite3
from datetime import date, datetime, timedelta

import pytest
import sqlalchemy as sa

from cxrad.errors import UserError
from cxrad.serving.node import db as dbmod
from cxrad.serving.node.db import Database, migrate, utcnow
from cxrad.serving.node.spool import Spool, SpoolFull

ID = "0123456789abcdef0123456789abcdef"


def film_row(i: int, **kw) -> dict:
    now = utcnow()
    row = {"id": f"{i:032x}", "sop_instance_uid": f"1.2.3.{i}", "source": "dicom", "calling_ae": "PACS",
           "score": 0.1 * i, "percentile": float(i), "components": {"a": i}, "verdict": "normal",
           "model_name": "m", "model_sha256": "0" * 64, "received_at": now, "scored_at": now}
    row.update(kw)
    return row


# --------------------------------------------------------------------------------------------------- spool
def test_a_put_is_on_disk_under_its_name_and_replays_in_order(tmp_path):
    spool = Spool(tmp_path, max_bytes=10**6)
    first = spool.put(ID, b"one", "dicom", "dcm", "MODALITY 1")
    second = spool.put("f" * 32, b"two", "http", "png")
    assert first.path.read_bytes() == b"one" and first.path.parent == tmp_path / "queue"
    again = Spool(tmp_path, max_bytes=10**6)  # a restart
    assert [(e.id, e.source, e.calling_ae, e.ext) for e in again.entries()] == [
        (ID, "dicom", "MODALITY 1", "dcm"), ("f" * 32, "http", None, "png")]
    assert again.used_bytes == 6 and again.depth == 2 and again.holds(ID)
    again.remove(again.entries()[0])
    assert not again.holds(ID) and again.used_bytes == 3 and not first.path.exists()
    assert second.received_at <= datetime.utcnow() + timedelta(seconds=1)


def test_a_full_spool_refuses_and_writes_nothing(tmp_path):
    spool = Spool(tmp_path, max_bytes=10)
    spool.put(ID, b"x" * 8, "dicom", "dcm")
    with pytest.raises(SpoolFull):
        spool.put("1" * 32, b"y" * 8, "dicom", "dcm")
    assert [e.id for e in spool.entries()] == [ID] and spool.used_bytes == 8
    assert not list((tmp_path / "tmp").iterdir())
    spool.remove(spool.entries()[0])
    spool.put("1" * 32, b"y" * 8, "dicom", "dcm")  # room again once the first is recorded
    big = Spool(tmp_path / "b", max_bytes=10**6, min_free_bytes=spool.free_bytes() + 1)
    with pytest.raises(SpoolFull, match="disk"):
        big.put(ID, b"z", "http", "png")


def test_unfinished_writes_are_dropped_and_foreign_files_ignored(tmp_path):
    spool = Spool(tmp_path, max_bytes=10**6)
    (tmp_path / "tmp" / "half.part").write_bytes(b"killed mid-write")
    (tmp_path / "queue" / "notes.txt").write_text("not ours")
    again = Spool(tmp_path, max_bytes=10**6)
    assert not list((tmp_path / "tmp").iterdir()) and again.entries() == []
    with pytest.raises(ValueError):
        spool.put("../../etc", b"x", "dicom", "dcm")


# ------------------------------------------------------------------------------------------------ database
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'node.db'}"
        return
    from postgres import throwaway_postgres
    with throwaway_postgres(tmp_path / "pg") as url:
        yield url


def test_a_fresh_database_is_migrated_in_order_and_twice_is_a_no_op(db_url):
    engine = dbmod.make_engine(db_url)
    assert migrate(engine, upto=1) == 1
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert {"films", "deliveries", "schema_version"} <= tables and "pictures" not in tables
    db = Database(db_url)  # brings version 1 to the current one
    with engine.connect() as conn:
        assert dbmod.current_version(conn) == dbmod.SCHEMA_VERSION
        assert "pictures" in sa.inspect(conn).get_table_names()
    Database(db_url)
    with engine.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(dbmod.schema_version)).scalar() == 1
        conn.execute(dbmod.schema_version.update().values(version=dbmod.SCHEMA_VERSION + 1))
    with pytest.raises(UserError, match="newer"):
        Database(db_url)
    with pytest.raises(UserError, match="newer|upgrade"):
        Database(db_url, read_only=True)
    db.close()
    engine.dispose()


def test_results_are_recorded_once_by_id_and_by_sop_instance_uid(db_url):
    db = Database(db_url)
    assert db.record([film_row(1), film_row(2)], [{"film_id": f"{1:032x}", "kind": "sr", "object_uid": "9.9"}],
                     [{"film_id": f"{1:032x}", "kind": "heatmap", "png": b"png"}]) == {f"{1:032x}", f"{2:032x}"}
    # the same film again (a replay), and another id with a SOP Instance UID already recorded
    assert db.record([film_row(1, score=99.0), film_row(3, sop_instance_uid="1.2.3.2")],
                     [{"film_id": f"{1:032x}", "kind": "sc", "object_uid": "9.8"}], []) == set()
    assert db.result(f"{1:032x}")["score"] == pytest.approx(0.1)
    assert db.result(f"{3:032x}") is None
    assert [d["kind"] for d in db.result(f"{1:032x}")["deliveries"]] == ["sr"]
    assert db.picture(f"{1:032x}") == b"png" and db.picture(f"{2:032x}") is None
    # rows without a SOP Instance UID (PNG uploads) do not collide with each other
    assert len(db.record([film_row(4, sop_instance_uid=None), film_row(5, sop_instance_uid=None)], [], [])) == 2
    with db.engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(dbmod.films.insert(), {**film_row(6, sop_instance_uid="1.2.3.1"), "components": "{}"})
    db.close()


def test_worklist_orders_by_score_and_filters_and_pages(db_url):
    db = Database(db_url)
    old = utcnow() - timedelta(days=3)
    db.record([film_row(1, verdict="anomalous", score=0.9), film_row(2, score=0.2, calling_ae="OTHER"),
               film_row(3, verdict="error", score=None, percentile=None, error="unreadable"),
               film_row(4, verdict="anomalous", score=0.5, received_at=old), film_row(5, score=0.3)], [], [])
    total, items = db.worklist()
    assert total == 5 and [i["id"][-1] for i in items] == ["1", "4", "5", "2", "3"]  # unscored last
    assert [i["id"][-1] for i in db.worklist(flagged=True)[1]] == ["1", "4"]
    assert [i["id"][-1] for i in db.worklist(flagged=False)[1]] == ["5", "2"]
    assert [i["id"][-1] for i in db.worklist(source_ae="OTHER")[1]] == ["2"]
    today = utcnow().date()
    assert db.worklist(since=today)[0] == 4 and db.worklist(until=today - timedelta(days=1))[0] == 1
    assert db.worklist(since=date(2000, 1, 1), until=today)[0] == 5
    total, page = db.worklist(limit=2, offset=2)
    assert total == 5 and [i["id"][-1] for i in page] == ["5", "2"]
    assert "patient_key" not in page[0] and page[0]["components"] == {"a": 5}
    db.close()


def test_a_claimed_delivery_is_never_claimed_twice_and_a_crash_leaves_it_unknown(db_url):
    db = Database(db_url)
    db.record([film_row(1), film_row(2)], [{"film_id": f"{1:032x}", "kind": "sr", "object_uid": "9.1"},
                                           {"film_id": f"{2:032x}", "kind": "sr", "object_uid": "9.2"}], [])
    other = Database(db_url)  # a second sender on the same database
    first = db.claim(("sr",), limit=1)
    assert [d["object_uid"] for d in first] == ["9.1"] and first[0]["attempts"] == 1
    second = other.claim(("sr",))
    assert [d["object_uid"] for d in second] == ["9.2"] and db.claim(("sr",)) == [] == other.claim(("sr",))
    db.finish(first[0], "pending", "out of resources", retry_in_s=3600)
    assert db.claim(("sr",)) == []  # not due yet
    db.finish(second[0], "sent")
    assert db.result(f"{2:032x}")["sent_at"] is not None
    again = db.claim(("sr",))
    assert again == []
    with db.engine.begin() as conn:  # make the retry due and claim it; then "crash" while sending
        conn.execute(dbmod.deliveries.update().values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    assert [d["attempts"] for d in db.claim(("sr",))] == [2]
    assert db.recover() == {"unknown": 1, "requeued": 0}
    assert db.claim(("sr",)) == [] and db.pending_deliveries() == 0
    assert db.counts()["deliveries"] == {("sr", "unknown"): 1, ("sr", "sent"): 1}
    assert db.outbox_names() == {f"{1:032x}.sr.dcm"}
    assert db.recover(resend_unknown=True) == {"unknown": 0, "requeued": 1}
    assert [d["object_uid"] for d in db.claim(("sr",))] == ["9.1"]
    db.close()
    other.close()


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'n.db'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    db.record([film_row(1)], [], [])
    assert os.path.exists(tmp_path / "n.db-wal")
    raw = sqlite3.connect(tmp_path / "n.db")  # another process reads while the node holds the database
    assert raw.execute("select count(*) from films").fetchone() == (1,)
    raw.close()
    reader = Database(f"sqlite:///{tmp_path / 'n.db'}", read_only=True)
    assert reader.worklist()[0] == 1
    reader.close()
    db.close()


@pytest.mark.slow
def test_a_node_on_postgresql_scores_records_and_reports_once(make_node, receiver):
    from dicom_films import c_store, film_dataset, sample_images
    from postgres import throwaway_postgres
    with throwaway_postgres() as url:
        pacs = receiver()
        node = make_node(database=url, destination=pacs.destination)
        films = [film_dataset(p) for p in sample_images()[:5]]
        assert c_store(films + films[:2], node.scp.port) == [0] * 7
        assert node.wait_idle(120)
        total, rows = node.db.worklist()
        assert total == 5 and {r["sop_instance_uid"] for r in rows} == {f.SOPInstanceUID for f in films}
        assert len(pacs.uids()) == len(set(pacs.uids())) == 5
        assert node.db.url.startswith("postgresql+psycopg://")
        node.stop()
