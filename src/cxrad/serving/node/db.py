"""The node's results in a real database: SQLite in WAL mode by default, PostgreSQL by URL
(``postgresql+psycopg://user@host/db``), through SQLAlchemy Core.

One row per film (``films``), keyed by an id derived from its SOP Instance UID (or, for PNG/JPEG uploads, its
content), with the SOP Instance UID unique: a film received twice is recorded once. ``deliveries`` holds each
result object to send (Structured Report, Secondary Capture, webhook) with its state:

    pending -> sending -> sent
                       -> pending (a definite failure: retried later, with backoff) -> ... -> failed
                       -> unknown (no answer after the request went out, or a crash while sending)

A delivery is marked ``sending`` (committed) before it goes out, so a crash can never make it go twice: at the
next start, ``sending`` becomes ``unknown``, which is reported and resent only when an operator asks
(``cxrad serve --resend-unknown``). ``pictures`` holds the heatmap shown by the dashboard's worklist.

The schema is versioned (``schema_version``): ``migrate`` applies the missing steps of ``MIGRATIONS`` in order,
each in a transaction, and refuses a database made by a newer cxrad.
"""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy import (Column, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table,
                        Text, UniqueConstraint, event)

from cxrad.errors import UserError

metadata = MetaData()

films = Table(
    "films", metadata,
    Column("id", String(32), primary_key=True),
    Column("sop_instance_uid", String(64), unique=True),
    Column("sop_class_uid", String(64)),
    Column("study_instance_uid", String(64)),
    Column("series_instance_uid", String(64)),
    Column("accession_number", String(16)),
    Column("patient_key", String(64)),  # HMAC-SHA256 of the patient ID with the node's secret
    Column("modality", String(16)),
    Column("source", String(8), nullable=False),  # dicom, http, stow
    Column("calling_ae", String(16)),
    Column("score", Float),
    Column("components", Text),  # JSON object: component name -> value
    Column("percentile", Float),
    Column("verdict", String(16), nullable=False),  # anomalous, normal, error
    Column("threshold", Float),
    Column("error", Text),
    Column("model_name", String(128), nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("received_at", DateTime, nullable=False),
    Column("scored_at", DateTime, nullable=False),
    Column("sent_at", DateTime),
)

deliveries = Table(
    "deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("film_id", String(32), ForeignKey("films.id"), nullable=False),
    Column("kind", String(8), nullable=False),  # sr, sc, webhook
    Column("object_uid", String(64)),  # the SR's or SC's SOP Instance UID
    Column("state", String(8), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime, nullable=False),
    Column("claim", String(32)),
    Column("last_error", Text),
    Column("sent_at", DateTime),
    UniqueConstraint("film_id", "kind", name="one_delivery_per_kind"),
)

pictures = Table(
    "pictures", metadata,
    Column("film_id", String(32), ForeignKey("films.id"), primary_key=True),
    Column("kind", String(16), primary_key=True),  # heatmap
    Column("png", LargeBinary, nullable=False),
)

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))


def _copies(*tables: Table) -> dict[str, Table]:
    """Private copies of ``tables`` (one metadata, so foreign keys resolve): the indexes a step makes stay out
    of the shared ``metadata``."""
    md = MetaData()
    return {t.name: t.to_metadata(md) for t in (films, deliveries, pictures) if t in tables or t is films}


# Each step creates what its version added. A later step that changes an existing table must spell the
# change out (ALTER TABLE), not create the table from the current definition above.
def _v1(conn) -> None:
    t = _copies(films, deliveries)
    t["films"].create(conn)
    t["deliveries"].create(conn)
    Index("deliveries_due", t["deliveries"].c.state, t["deliveries"].c.next_attempt_at).create(conn)


def _v2(conn) -> None:
    t = _copies(pictures)
    t["pictures"].create(conn)
    Index("films_worklist", t["films"].c.verdict, t["films"].c.score).create(conn)
    Index("films_received", t["films"].c.received_at).create(conn)


#: the schema's history: version -> the step that makes it from the one before
MIGRATIONS = {1: _v1, 2: _v2}
SCHEMA_VERSION = max(MIGRATIONS)
STATES = ("pending", "sending", "sent", "failed", "unknown")
VERDICTS = ("anomalous", "normal", "error")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite gets WAL (readers never block the writer), full fsync on commit, a busy
    timeout and foreign keys."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def current_version(conn) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)


def migrate(engine: sa.Engine, upto: int = SCHEMA_VERSION) -> int:
    """Bring the schema to version ``upto``, one transaction per step; returns the version."""
    with engine.begin() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            schema_version.create(conn)
        version = current_version(conn)
    if version > SCHEMA_VERSION:
        raise UserError(f"the node's database has schema version {version}, newer than this cxrad knows "
                        f"({SCHEMA_VERSION}): upgrade cxrad")
    for step in range(version + 1, upto + 1):
        with engine.begin() as conn:
            MIGRATIONS[step](conn)
            conn.execute(schema_version.delete())
            conn.execute(schema_version.insert().values(version=step))
    return max(version, upto)


def _film_dict(row) -> dict:
    out = dict(row._mapping)
    out["components"] = json.loads(out["components"]) if out.get("components") else {}
    for key in ("received_at", "scored_at", "sent_at"):
        if isinstance(out.get(key), datetime):
            out[key] = out[key].isoformat(timespec="milliseconds") + "Z"
    out.pop("patient_key", None)  # stays in the database, for grouping a patient's films there
    return out


class Database:
    """The node's database; ``read_only`` (the dashboard) never migrates and never writes."""

    def __init__(self, url: str, read_only: bool = False):
        self.url = url
        self.engine = make_engine(url)
        if read_only:
            with self.engine.connect() as conn:
                version = current_version(conn)
            if version != SCHEMA_VERSION:
                raise UserError(f"the node's database has schema version {version}, this cxrad reads "
                                f"{SCHEMA_VERSION}" + (": start `cxrad serve` once to migrate it"
                                                       if version < SCHEMA_VERSION else ": upgrade cxrad"))
        else:
            migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------------------------------ results
    def known(self, ids) -> set[str]:
        ids = list(ids)
        if not ids:
            return set()
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(films.c.id).where(films.c.id.in_(ids))).scalars())

    def record(self, rows: list[dict], new_deliveries: list[dict], new_pictures: list[dict]) -> set[str]:
        """Insert films, their deliveries and pictures in one transaction; films already recorded (by id or
        SOP Instance UID) are left as they are, with nothing of theirs added. Returns the ids inserted."""
        if not rows:
            return set()
        with self.engine.begin() as conn:
            ids = [r["id"] for r in rows]
            uids = [r["sop_instance_uid"] for r in rows if r.get("sop_instance_uid")]
            seen = set(conn.execute(sa.select(films.c.id).where(films.c.id.in_(ids))).scalars())
            if uids:
                seen_uids = set(conn.execute(sa.select(films.c.sop_instance_uid)
                                             .where(films.c.sop_instance_uid.in_(uids))).scalars())
            else:
                seen_uids = set()
            fresh, fresh_uids = [], set()
            for r in rows:
                uid = r.get("sop_instance_uid")
                if r["id"] in seen or (uid and (uid in seen_uids or uid in fresh_uids)):
                    continue
                fresh.append(r)
                seen.add(r["id"])
                if uid:
                    fresh_uids.add(uid)
            inserted = {r["id"] for r in fresh}
            if fresh:
                conn.execute(films.insert(), [{**r, "components": json.dumps(r.get("components") or {})}
                                              for r in fresh])
            now = utcnow()
            todo = [{"state": "pending", "attempts": 0, "next_attempt_at": now, **d} for d in new_deliveries
                    if d["film_id"] in inserted]
            if todo:
                conn.execute(deliveries.insert(), todo)
            pics = [p for p in new_pictures if p["film_id"] in inserted]
            if pics:
                conn.execute(pictures.insert(), pics)
        return inserted

    def result(self, film_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(films).where(films.c.id == film_id)).first()
            if row is None:
                return None
            out = _film_dict(row)
            out["deliveries"] = [dict(r._mapping) for r in conn.execute(
                sa.select(deliveries.c.kind, deliveries.c.state, deliveries.c.object_uid)
                .where(deliveries.c.film_id == film_id).order_by(deliveries.c.id))]
        return out

    def worklist(self, flagged: bool | None = None, since: date | None = None, until: date | None = None,
                 source_ae: str | None = None, limit: int = 50, offset: int = 0) -> tuple[int, list[dict]]:
        """Films by score, highest first (unscored ones last); ``flagged``: only anomalous (True) or only
        normal (False) films; ``since``/``until``: received on or after / on or before these days (UTC);
        ``source_ae``: sent by this calling AE title. Returns (how many match, this page)."""
        where = []
        if flagged is not None:
            where.append(films.c.verdict == ("anomalous" if flagged else "normal"))
        if since is not None:
            where.append(films.c.received_at >= datetime.combine(since, datetime.min.time()))
        if until is not None:
            where.append(films.c.received_at < datetime.combine(until + timedelta(days=1), datetime.min.time()))
        if source_ae is not None:
            where.append(films.c.calling_ae == source_ae)
        order = [sa.case((films.c.score.is_(None), 1), else_=0), films.c.score.desc(), films.c.received_at,
                 films.c.id]
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(films).where(*where)).scalar()
            rows = conn.execute(sa.select(films).where(*where).order_by(*order).limit(limit).offset(offset))
            return int(total), [_film_dict(r) for r in rows]

    def picture(self, film_id: str, kind: str = "heatmap") -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(pictures.c.png).where(pictures.c.film_id == film_id,
                                                               pictures.c.kind == kind)).scalar()

    def counts(self) -> dict:
        """Films by verdict and deliveries by kind and state, for /metrics and /healthz."""
        with self.engine.connect() as conn:
            verdicts = dict(conn.execute(sa.select(films.c.verdict, sa.func.count()).group_by(films.c.verdict))
                            .all())
            states = {(k, s): n for k, s, n in conn.execute(
                sa.select(deliveries.c.kind, deliveries.c.state, sa.func.count())
                .group_by(deliveries.c.kind, deliveries.c.state))}
        return {"verdicts": verdicts, "deliveries": states}

    # ---------------------------------------------------------------------------------------- deliveries
    def claim(self, kinds, limit: int = 32) -> list[dict]:
        """Due pending deliveries of ``kinds``, each moved to ``sending`` (committed) before it is returned;
        one claim per row, so two senders never take the same delivery."""
        now = utcnow()
        with self.engine.connect() as conn:
            due = conn.execute(sa.select(deliveries.c.id).where(
                deliveries.c.state == "pending", deliveries.c.kind.in_(list(kinds)),
                deliveries.c.next_attempt_at <= now).order_by(deliveries.c.id).limit(limit)).scalars().all()
        if not due:
            return []
        token = uuid.uuid4().hex
        with self.engine.begin() as conn:
            for delivery_id in due:
                conn.execute(deliveries.update().where(deliveries.c.id == delivery_id,
                                                       deliveries.c.state == "pending")
                             .values(state="sending", claim=token, attempts=deliveries.c.attempts + 1))
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(deliveries, films.c.sop_instance_uid.label("film_sop_instance_uid"))
                                .join(films, films.c.id == deliveries.c.film_id)
                                .where(deliveries.c.claim == token, deliveries.c.state == "sending")
                                .order_by(deliveries.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def finish(self, delivery: dict, state: str, error: str | None = None, retry_in_s: float = 0.0) -> None:
        """The outcome of sending a claimed delivery: ``sent``, ``failed``, ``unknown``, or ``pending`` (to be
        retried in ``retry_in_s``). A sent SR or SC also stamps its film's sent time."""
        if state not in STATES or state == "sending":
            raise ValueError(state)
        now = utcnow()
        values = {"state": state, "last_error": error, "claim": None}
        if state == "sent":
            values["sent_at"] = now
        if state == "pending":
            values["next_attempt_at"] = now + timedelta(seconds=retry_in_s)
        with self.engine.begin() as conn:
            conn.execute(deliveries.update().where(deliveries.c.id == delivery["id"],
                                                   deliveries.c.state == "sending").values(**values))
            if state == "sent" and delivery["kind"] in ("sr", "sc"):
                conn.execute(films.update().where(films.c.id == delivery["film_id"], films.c.sent_at.is_(None))
                             .values(sent_at=now))

    def recover(self, resend_unknown: bool = False) -> dict:
        """At start: deliveries left ``sending`` by a crash become ``unknown`` (they may have arrived); with
        ``resend_unknown`` the unknown ones go back to ``pending``. Returns the counts."""
        with self.engine.begin() as conn:
            crashed = conn.execute(deliveries.update().where(deliveries.c.state == "sending")
                                   .values(state="unknown", claim=None,
                                           last_error="the node stopped while sending")).rowcount
            resent = 0
            if resend_unknown:
                resent = conn.execute(deliveries.update().where(deliveries.c.state == "unknown")
                                      .values(state="pending", next_attempt_at=utcnow())).rowcount
        return {"unknown": crashed, "requeued": resent}

    def pending_deliveries(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(deliveries)
                                    .where(deliveries.c.state.in_(("pending", "sending")))).scalar())

    def outbox_names(self) -> set[str]:
        """Outbox files that deliveries still need (pending or sending)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(deliveries.c.film_id, deliveries.c.kind).where(
                deliveries.c.state.in_(("pending", "sending", "unknown")), deliveries.c.kind.in_(("sr", "sc"))))
            return {f"{film_id}.{kind}.dcm" for film_id, kind in rows}
