"""The dashboard's Worklist page over a real screening node's database: films by score with the heatmap of
the film chosen, the filters, a node that is not there; and the entry page that offers both pages."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("sqlalchemy")
pytest.importorskip("pynetdicom")
from streamlit.testing.v1 import AppTest  # noqa: E402

from cxrad.frontends.app import worklist  # noqa: E402
from cxrad.frontends.app.launch import ENV_MODEL, ENV_NODE_DB  # noqa: E402

PAGE = Path(worklist.__file__).with_name("worklist_page.py")
ENTRY = Path(worklist.__file__).with_name("dashboard.py")


@pytest.fixture(scope="module")
def node_state(tmp_path_factory, tiny_model):
    """A node's state folder after it scored 8 films: 6 bundled sample images and 2 DICOM films sent by a
    modality (one of them unreadable)."""
    from cxrad.serving.node.config import NodeConfig
    from cxrad.serving.node.instances import film_id_for_bytes, film_id_for_uid
    from cxrad.serving.node.service import Node
    from dicom_films import encode, film_dataset, free_port, sample_images

    state = tmp_path_factory.mktemp("node")
    node = Node(NodeConfig(state, dicom_port=0, http_port=free_port(), max_wait_ms=20),
                model=tiny_model("dae")[1]).start()
    try:
        for path in sample_images()[:6]:
            data = path.read_bytes()
            node.receive(film_id_for_bytes(data), data, "http", "jpg")
        good, bad = film_dataset(sample_images()[7]), film_dataset(sample_images()[8])
        bad.PixelData = bad.PixelData[:64]
        for ds in (good, bad):
            node.receive(film_id_for_uid(ds.SOPInstanceUID), encode(ds), "dicom", "dcm", "WARD7")
        assert node.wait_idle(120)
    finally:
        node.stop()
    return state


def test_the_table_is_the_nodes_films_by_score(node_state):
    db = worklist.open_database(worklist.node_database_url(str(node_state)))
    total, table = worklist.worklist_table(db)
    assert total == 8 and list(table.columns) == worklist.COLUMNS
    scored = table[table["verdict"] != "error"]["score"].tolist()
    assert scored == sorted(scored, reverse=True) and table.iloc[-1]["verdict"] == "error"
    assert worklist.source_titles(db) == ["WARD7"]
    assert worklist.worklist_table(db, source_ae="WARD7")[0] == 2
    flagged, normal = worklist.worklist_table(db, flagged=True)[0], worklist.worklist_table(db, flagged=False)[0]
    assert flagged + normal == 7
    assert worklist.heatmap(db, table.iloc[0]["id"]).startswith(b"\x89PNG")
    assert worklist.heatmap(db, table.iloc[-1]["id"]) is None
    assert "patient" not in " ".join(table.columns)


def test_the_page_lists_films_and_shows_the_heatmap_of_the_chosen_one(node_state, monkeypatch):
    monkeypatch.setenv(ENV_NODE_DB, str(node_state))
    at = AppTest.from_file(str(PAGE), default_timeout=120).run()
    assert not at.exception
    assert at.subheader[0].value.startswith("8 film(s)")
    shown = at.dataframe[0].value
    assert len(shown) == 8 and shown["score"].iloc[0] == shown["score"].max()
    captions = [c for im in at.image for c in im.captions]
    assert captions == ["Anomaly heatmap over the model's input"]  # of the first (highest) film
    assert any(m.label == "Anomaly score" for m in at.metric)
    at.sidebar.radio(key="verdict").set_value("flagged (anomalous)").run()
    assert all(v == "anomalous" for v in at.dataframe[0].value["verdict"])
    at.sidebar.radio(key="verdict").set_value("all films").run()
    at.sidebar.selectbox(key="source").set_value("WARD7").run()
    assert len(at.dataframe[0].value) == 2


def test_without_a_node_the_page_says_how_to_connect_one(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_NODE_DB, raising=False)
    at = AppTest.from_file(str(PAGE), default_timeout=60).run()
    assert "--node-state" in at.info[0].value and not at.exception
    monkeypatch.setenv(ENV_NODE_DB, f"sqlite:///{tmp_path / 'missing' / 'node.db'}")
    at = AppTest.from_file(str(PAGE), default_timeout=60).run()
    assert at.error and not at.exception and str(tmp_path) not in at.error[0].value


def test_the_entry_page_offers_screening_and_the_worklist(node_state, tiny_cae_bundle, monkeypatch):
    monkeypatch.setenv(ENV_NODE_DB, str(node_state))
    monkeypatch.setenv(ENV_MODEL, str(tiny_cae_bundle))
    at = AppTest.from_file(str(ENTRY), default_timeout=120).run()
    assert not at.exception and at.title[0].value.startswith("cxrad")
    at.switch_page(str(PAGE)).run()
    assert not at.exception and at.title[0].value == "Worklist"


def test_cxrad_app_checks_the_node_state(tmp_path, capsys):
    from cxrad.frontends.cli import main
    assert main(["app", "--node-state", str(tmp_path)]) == 1
    assert "no node.db" in capsys.readouterr().err
