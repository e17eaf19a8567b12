"""The screening node's fixtures: a tiny trained DAE (it draws heatmaps), a node in this process with its HTTP
API under FastAPI's test client and its DICOM listener on a free loopback port, and a destination SCP."""
from __future__ import annotations

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
pytest.importorskip("fastapi")


@pytest.fixture(scope="session")
def node_model(tiny_model):
    """(detector, bundle folder) of a tiny DAE."""
    return tiny_model("dae")


@pytest.fixture
def receiver():
    from dicom_films import Receiver
    made = []

    def make(**kw):
        made.append(Receiver(**kw))
        return made[-1]
    yield make
    for r in made:
        r.stop()


@pytest.fixture
def make_node(tmp_path, node_model):
    """``make_node(**settings)`` -> a started Node (state in tmp_path/state unless ``state_dir`` is given)."""
    from cxrad.serving.node.config import Destination, NodeConfig
    from cxrad.serving.node.service import Node
    from dicom_films import free_port
    nodes = []

    def make(start: bool = True, model=None, **kw):
        kw.setdefault("state_dir", tmp_path / "state")
        kw.setdefault("dicom_port", free_port())
        kw.setdefault("http_port", free_port())
        kw.setdefault("max_wait_ms", 20)
        if isinstance(kw.get("destination"), str):
            kw["destination"] = Destination.parse(kw["destination"])
        node = Node(NodeConfig(**kw), model=model or node_model[1])
        nodes.append(node)
        return node.start() if start else node
    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def client_of():
    from fastapi.testclient import TestClient
    clients = []

    def make(node, **kw):
        clients.append(TestClient(node.app, raise_server_exceptions=False, **kw))
        return clients[-1]
    yield make
    for c in clients:
        c.close()
