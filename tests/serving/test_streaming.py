"""The streaming scorer on real images: the same rows as scoring everything at once, cold and warm cache,
a damaged cache entry read as a miss, and the model's threads (as told with --threads, or one per core): that
many batches scored at once on one torch thread each, the setting restored after."""
from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from cxrad.data import prep_key
from cxrad.detectors import load_detector
from cxrad.serving.streaming import read_scores, score_to_files


@pytest.fixture(scope="module")
def dae(tiny_model):
    return load_detector(tiny_model("dae")[1], device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory, sample_test_files):
    bad = tmp_path_factory.mktemp("bad") / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return sample_test_files[:30] + [str(bad)] + sample_test_files[30:]


def by_path(table: pd.DataFrame) -> pd.DataFrame:
    return table.set_index("path").sort_index()


def test_stream_cold_warm_and_damaged_cache_give_the_batch_scores(dae, files, tmp_path):
    expected = by_path(dae.score(files))
    cache = tmp_path / "cache"
    for run in ("cold", "warm"):
        score_to_files(dae, files, tmp_path / run, batch_size=16, cache_dir=cache)
        got = by_path(read_scores(tmp_path / run / "scores.csv"))
        assert list(got.index) == list(expected.index), run
        np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-6, err_msg=run)
        assert (got["error"] != "").sum() == 1 and "not a readable image" in got.loc[files[30], "error"]
        on_disk = pd.read_csv(tmp_path / run / "scores.csv", keep_default_na=False)
        assert len(on_disk) == len(files)

    items = sorted((cache / prep_key(dae.prep)).glob("??/*.npy"))
    assert len(items) == len(files) - 1
    items[0].write_bytes(b"")  # what a crash can leave of a file written without fsync
    items[1].write_bytes(items[1].read_bytes()[:40])
    for set_file in (cache / prep_key(dae.prep) / "sets").glob("*.npy"):
        set_file.unlink()
    score_to_files(dae, files, tmp_path / "damaged", batch_size=16, cache_dir=cache)
    got = by_path(read_scores(tmp_path / "damaged" / "scores.csv"))
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-6)
    assert items[0].stat().st_size > 0 and items[1].stat().st_size > 40  # decoded again and rewritten


class ModelSpy:
    """Records, for each batch the model scores, torch's thread count and how many batches run at once."""

    def __init__(self, det_class, monkeypatch, hold_s=0.5):
        self.threads, self.most_at_once, self._now, self._lock = [], 0, 0, threading.Lock()
        real = det_class._run

        def spy(det, images, *args, **kwargs):
            with self._lock:
                self._now += 1
                self.most_at_once = max(self.most_at_once, self._now)
                self.threads.append(torch.get_num_threads())
            time.sleep(hold_s)  # long enough for the next batch to be decoded and started meanwhile
            try:
                return real(det, images, *args, **kwargs)
            finally:
                with self._lock:
                    self._now -= 1
        monkeypatch.setattr(det_class, "_run", spy)


def test_the_model_scores_a_batch_per_thread_at_once_and_the_setting_is_restored(dae, files, tmp_path,
                                                                                 monkeypatch):
    from cxrad.serving.streaming import available_cpus
    expected = by_path(dae.score(files[:40]))
    before = torch.get_num_threads()
    for told in (None, 1, 2, 3):
        spy = ModelSpy(type(dae), monkeypatch)
        score_to_files(dae, files[:40], tmp_path / f"told{told}", batch_size=8, threads=told)
        got = by_path(read_scores(tmp_path / f"told{told}" / "scores.csv"))
        assert list(got.index) == list(expected.index)
        np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-6)
        assert spy.threads == [1] * 5, told  # every batch on one torch thread
        assert spy.most_at_once == (told or available_cpus()), told
        assert torch.get_num_threads() == before


def test_cxrad_score_threads_flag_reaches_the_model(tiny_model, files, tmp_path, monkeypatch):
    from cxrad.frontends.cli import main
    for told in ("2", "1"):
        spy = ModelSpy(type(load_detector(tiny_model("dae")[1], device="cpu")), monkeypatch)
        assert main(["score", *files[:24], "--model", str(tiny_model("dae")[1]), "--threads", told, "--workers",
                     "1", "--batch-size", "8", "--quiet", "--device", "cpu", "--out", str(tmp_path / told)]) == 0
        assert spy.threads == [1] * 3 and spy.most_at_once == int(told)


def test_file_lists_in_text_or_csv_name_files_relative_to_the_list(tiny_model, files, tmp_path, capsys):
    from cxrad.frontends.cli import main
    from cxrad.serving.streaming import read_file_list
    (tmp_path / "list.txt").write_text("\n".join([files[0], "", files[1]]) + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "list.csv").write_text("file,label\n../a.png,normal\n/abs/b.png,abnormal\n")
    assert read_file_list(tmp_path / "list.txt") == files[:2]
    assert read_file_list(tmp_path / "sub" / "list.csv") == [str(tmp_path / "sub" / "../a.png"), "/abs/b.png"]
    code = main(["score", files[2], "--files-from", str(tmp_path / "list.txt"), "--model", str(tiny_model("dae")[1]),
                 "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert sorted(pd.read_csv(tmp_path / "out" / "scores.csv")["path"]) == sorted(files[:3])
