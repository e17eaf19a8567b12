"""The dashboard's "Worklist" page reads a screening node's database (``cxrad serve``): films by score, with
filters, and the heatmap of the film chosen. This module is its testable part; ``worklist_page.py`` lays it out.

The page opens the database read-only (it never migrates or writes) and shows no patient data: the node keeps
none besides a keyed hash of the patient ID, which the page does not show either.
"""
from __future__ import annotations

import os
from datetime import date

import pandas as pd

from cxrad.frontends.app.launch import ENV_NODE_DB  # cxrad app --node-db URL or --node-state DIR
COLUMNS = ["score", "percentile", "verdict", "received_at", "calling_ae", "source", "accession_number", "modality",
           "error", "id", "sop_instance_uid", "study_instance_uid"]
VERDICTS = {"all films": None, "flagged (anomalous)": True, "not flagged (normal)": False}


def node_database_url(value: str | None = None) -> str | None:
    """A SQLAlchemy URL for ``value`` (a URL, or a node's state folder); default: the environment's."""
    value = value if value is not None else os.environ.get(ENV_NODE_DB)
    if not value:
        return None
    if "://" in value:
        return value
    from pathlib import Path
    return f"sqlite:///{(Path(value).expanduser() / 'node.db').resolve()}"


def open_database(url: str):
    from cxrad.serving.node.db import Database
    return Database(url, read_only=True)


def worklist_table(db, flagged: bool | None = None, since: date | None = None, until: date | None = None,
                   source_ae: str | None = None, limit: int = 100, offset: int = 0) -> tuple[int, pd.DataFrame]:
    """(films matching, this page as a table ordered by score, highest first)."""
    total, items = db.worklist(flagged, since, until, source_ae or None, limit, offset)
    table = pd.DataFrame(items, columns=[*COLUMNS, "components"])
    table = table[COLUMNS]
    table["received_at"] = pd.to_datetime(table["received_at"], utc=True, errors="coerce")
    return total, table.reset_index(drop=True)


def source_titles(db) -> list[str]:
    """Calling AE titles that sent films, for the filter."""
    import sqlalchemy as sa

    from cxrad.serving.node.db import films
    with db.engine.connect() as conn:
        return sorted(t for t in conn.execute(sa.select(films.c.calling_ae).distinct()).scalars() if t)


def heatmap(db, film_id: str) -> bytes | None:
    return db.picture(film_id)
