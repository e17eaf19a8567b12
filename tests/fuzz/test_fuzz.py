"""CI-sized fuzz run (issue #13): ~300 generated bad, odd and hostile files plus devices and FIFOs, scored by
``cxrad score`` in a subprocess with a timeout. Every file must become a score row or an error row with a
one-line reason; no traceback, no hang; files that must not be scored (bad values, bombs, garbage) are error
rows; valid files are scored. benchmarks/fuzz.py runs the same at 10,000 files and measures memory."""
from __future__ import annotations

import pandas as pd
import pytest

from cxrad.serving.streaming import read_scores
from fuzz.generate import check_table, generate, special_files
from tiny_models import run_cxrad, tiny_dae

N_FILES = 300


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_dae(tmp_path_factory)


def test_every_fuzz_file_is_a_score_row_or_an_error_row(model, tmp_path, shared_data):
    cases = generate(tmp_path / "files", N_FILES, seed=13, data=shared_data)
    cases += special_files(tmp_path / "files" / "special")
    done = run_cxrad(["score", tmp_path / "files", "--model", model, "--out", tmp_path / "out", "--device", "cpu",
                      "--quiet", "--cache-dir", tmp_path / "cache", "--batch-size", "32"], timeout=300)
    assert done.returncode == 3, done.stderr[-3000:]  # some files failed (3), no fatal error (1)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    table = read_scores(tmp_path / "out" / "scores.csv")
    outcome, problems = check_table(table, cases)
    assert not problems, problems[:20]
    kinds = {k for k, _ in outcome}
    assert len(kinds) >= 40  # every generator kind (and the special files) took part
    # a second run over the same files reads its cache, and must give the same rows
    again = run_cxrad(["score", tmp_path / "files", "--model", model, "--out", tmp_path / "out2", "--device", "cpu",
                       "--quiet", "--cache-dir", tmp_path / "cache"], timeout=300)
    assert again.returncode == 3 and "Traceback" not in again.stderr
    second = read_scores(tmp_path / "out2" / "scores.csv")
    merged = table.merge(second, on="path", suffixes=("", "_2"))
    assert len(merged) == len(table) and (merged["error"] == merged["error_2"]).all()
    ok = merged["error"] == ""
    pd.testing.assert_series_equal(merged.loc[ok, "score"], merged.loc[ok, "score_2"], check_names=False)
