"""The Ray engine on a local 2-CPU Ray instance: the same rows as the local streaming scorer on bundled sample
images (an unreadable file included), written as shards and merged in input order; resume redoes only the
missing shard; the command passes its operating point to the actors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed, so the Ray engine is not tested; "
                          "pip install 'cxrad[ray]' (~80 MB wheel, ~240 MB installed) to run it")

from cxrad.frontends.cli import main  # noqa: E402
from cxrad.detectors import load_detector  # noqa: E402
from cxrad.serving.ray_engine import score_with_ray, shard_paths  # noqa: E402
from cxrad.serving.streaming import read_scores, score_to_files  # noqa: E402

pytestmark = pytest.mark.slow  # starting Ray takes ~10 s


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory, sample_test_files):
    bad = tmp_path_factory.mktemp("bad") / "broken.jpeg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    return sample_test_files[:10] + [str(bad)] + sample_test_files[10:20]


def test_ray_engine_equals_the_local_scorer_and_resumes_by_shard(local_ray, tiny_model, files, tmp_path):
    _, bundle = tiny_model("dae")
    det = load_detector(bundle, device="cpu")
    score_to_files(det, files, tmp_path / "local", batch_size=8)
    merged = score_with_ray(bundle, files, tmp_path / "ray", actors=2, batch_size=4, shard_size=8)
    assert list(merged["path"]) == files  # input order, the unreadable file in its place
    assert [len(read_scores(shard_paths(tmp_path / "ray", k)[0])) for k in range(3)] == [8, 8, 5]
    assert len(pd.read_json(tmp_path / "ray" / "scores.jsonl", lines=True)) == len(files)
    ray_rows = read_scores(tmp_path / "ray" / "scores.csv").set_index("path").loc[files]
    local_rows = read_scores(tmp_path / "local" / "scores.csv").set_index("path").loc[files]
    assert list(ray_rows.columns) == list(local_rows.columns)
    np.testing.assert_allclose(ray_rows["score"], local_rows["score"], rtol=1e-6)
    np.testing.assert_allclose(ray_rows["score"], local_rows["score"], rtol=1e-6)
    for column in ("anomalous", "error", "percentile"):
        assert list(ray_rows[column].astype(str)) == list(local_rows[column].astype(str)), column
    assert ray_rows.loc[files[10], "error"] and np.isnan(ray_rows.loc[files[10], "score"])

    first, second = shard_paths(tmp_path / "ray", 0)[0], shard_paths(tmp_path / "ray", 1)
    stamp = first.stat().st_mtime_ns
    for p in second:
        p.unlink()
    again = score_with_ray(bundle, files, tmp_path / "ray", actors=2, batch_size=4, shard_size=8, resume=True)
    assert first.stat().st_mtime_ns == stamp and all(p.exists() for p in second)
    pd.testing.assert_frame_equal(again, merged)


def test_score_command_on_ray_uses_the_given_operating_point(local_ray, tiny_model, files, tmp_path, capsys):
    _, bundle = tiny_model("dae")
    code = main(["score", *files[:6], "--model", str(bundle), "--engine", "ray", "--actors", "1", "--shard-size", "4",
                 "--out", str(tmp_path / "out"), "--threshold-value", "0", "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    rows = read_scores(tmp_path / "out" / "scores.csv")
    assert len(rows) == 6 and set(rows["anomalous"]) == {True}  # every score is above 0
    assert (tmp_path / "out" / "scores-00001.csv").exists()


def test_both_engines_print_the_same_table_and_ray_warns_of_nothing(local_ray, tiny_model, files, tmp_path, capfd):
    """One renderer for the terminal table (the same precision, the same empty cells for the unreadable file),
    and none of Ray's deprecation warnings on the way."""
    _, bundle = tiny_model("dae")
    tables = {}
    for engine in ("local", "ray"):
        extra = ["--actors", "2", "--shard-size", "8"] if engine == "ray" else []
        code = main(["score", *files, "--model", str(bundle), "--engine", engine, *extra, "--out",
                     str(tmp_path / engine), "--quiet", "--device", "cpu"])
        out, err = capfd.readouterr()
        assert code == 3, err
        assert "deprecated" not in err.lower() and "Warning" not in err, err
        tables[engine] = out
    assert tables["ray"] == tables["local"]
    assert "NaN" not in tables["local"] and "<NA>" not in tables["local"]
