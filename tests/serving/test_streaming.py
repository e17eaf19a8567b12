"""The streaming scorer on real images: the same rows as scoring everything at once, cold and warm cache,
a damaged cache entry read as a miss, and the model's thread count (as told with --threads, or chosen from
the measured cost of decoding and scoring) set while scoring and restored after."""
from __future__ import annotations

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


def test_the_models_threads_are_measured_or_as_told_and_the_setting_is_restored(dae, files, tmp_path, monkeypatch):
    seen = []
    real = type(dae)._run

    def spy(self, images, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(type(dae), "_run", spy)
    before = torch.get_num_threads()
    score_to_files(dae, files[:40], tmp_path / "auto", batch_size=8, workers=1)
    auto, seen[:] = list(seen), []
    for told in (1, 2):
        score_to_files(dae, files[:24], tmp_path / f"told{told}", batch_size=8, threads=told)
        assert seen == [told] * 3
        seen.clear()
    # measured: two batches on one thread, then (on more than one core) a trial of the cost split, then the
    # faster of the two for the rest
    assert auto[:2] == [1, 1] and len(set(auto[3:])) == 1 and auto[3] in (1, auto[2])
    assert torch.get_num_threads() == before


def test_thread_chooser_splits_the_cores_by_measured_cost_and_keeps_the_faster():
    from cxrad.serving.streaming import ThreadChooser

    def run(decode_s, model_s_by_threads, cores=2, batches=6, idle=1.0):
        ticks = iter(range(0, 10**6, 100))

        def cpu_times():  # /proc/stat as seen by the chooser: ``idle`` of the cores idle meanwhile
            t = next(ticks)
            return t * idle / cores, float(t)
        chooser, used = ThreadChooser(cores=cores, workers=2, cpu_times=cpu_times), []
        chooser.observe_decode(64, decode_s * 64 / 2)
        for _ in range(batches):
            n = chooser.threads()
            used.append(n)
            chooser.observe_model(n, 64, model_s_by_threads[n] * 64)
        return used

    quiet = {1: 0.0080, 2: 0.0042}  # the model twice as fast on two threads; a JPEG decode 0.45 ms
    assert run(0.00045, quiet) == [1, 1, 2, 2, 2, 2]
    busy = {1: 0.0080, 2: 0.0300}  # other jobs hold the cores: two threads wait on each other
    assert run(0.00045, busy, idle=0.9) == [1, 1, 2, 1, 1, 1]  # looked idle, was not: the trial says so
    assert run(0.00045, busy, idle=0.1) == [1] * 6  # no idle core: no trial
    assert run(0.0126, quiet) == [1] * 6  # a 1024 px PNG decode costs more than the model: no trial
    assert run(0.00045, quiet, cores=1) == [1] * 6
    four = {1: 0.008, 2: 0.006, 3: 0.004, 4: 0.0025}
    assert run(0.00045, four, cores=4, idle=3.0)[2:] == [4] * 4
    assert run(0.00045, four, cores=4, idle=1.2)[2:] == [2] * 4  # one more core than the model's is free


def test_cxrad_score_threads_flag_reaches_the_model(tiny_model, files, tmp_path, monkeypatch):
    from cxrad.frontends.cli import main
    det_class = type(load_detector(tiny_model("dae")[1], device="cpu"))
    seen, real = [], det_class._run

    def spy(self, images, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(det_class, "_run", spy)
    for told in ("2", "1"):
        seen.clear()
        assert main(["score", *files[:20], "--model", str(tiny_model("dae")[1]), "--threads", told, "--workers",
                     "1", "--batch-size", "8", "--quiet", "--device", "cpu", "--out", str(tmp_path / told)]) == 0
        assert seen == [int(told)] * 3


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
