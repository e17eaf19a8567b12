"""AnoGAN and f-AnoGAN at 32 px on bundled samples: shapes, batched mapping, persistence, thresholds, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bundle_tools import resign
import torch

from cxrad.errors import BundleError
from cxrad.detectors import load_detector
from cxrad.data import load_images
from cxrad.detectors.anogan import AnoGANDetector, Discriminator, Encoder, FAnoGANDetector, Generator

pytestmark = pytest.mark.slow  # every test here trains GANs or several members

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "src" / "cxrad" / "frontends" / "cli" / "configs" / "anogan_tb.yaml"
SMALL = dict(image_size=32, epochs=2, width=8, z_dim=10, batch_size=16, device="cpu", seed=0)


@pytest.fixture(scope="module")
def train_images(sample_manifest, cache_dir):
    train = sample_manifest[sample_manifest["orig_split"] == "train"].head(40)
    return load_images(train, AnoGANDetector(**SMALL).prep, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def test_set(sample_manifest, cache_dir):
    """Labelled kermany224 test images (normal + pneumonia), 12 of each."""
    test = sample_manifest[sample_manifest["orig_split"] == "test"]
    test = test.groupby("label").head(12)
    return load_images(test, AnoGANDetector(**SMALL).prep, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def anogan(train_images, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("anogan_ckpt")
    return AnoGANDetector(**SMALL, map_iters=15, map_lr=0.05, checkpoint_dir=str(ckpt)).fit(train_images)


@pytest.fixture(scope="module")
def fanogan(train_images):
    return FAnoGANDetector(**SMALL).fit(train_images)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_layer_shapes(size):
    G, D, E = Generator(size, z_dim=10, width=4), Discriminator(size, width=4), Encoder(size, z_dim=10, width=4)
    x = G(torch.randn(3, 10))
    assert x.shape == (3, 1, size, size) and x.abs().max() <= 1
    assert D(x).shape == (3,)
    assert D.features(x).shape == (3, 16 * min(4 * size // 8, 32))  # the 4x4 block before the logit
    assert E(x).shape == (3, 10)
    with pytest.raises(ValueError, match="power-of-two"):
        Generator(100)


def test_training_records_history_samples_and_resumes(anogan, train_images):
    ckpt = Path(anogan.checkpoint_dir)
    assert [len(anogan.history_[k]) for k in ("d_loss", "g_loss")] == [2, 2]
    assert np.isfinite(anogan.history_["d_loss"]).all()
    assert sorted(p.name for p in (ckpt / "samples").glob("*.png")) == ["samples_epoch0001.png",
                                                                         "samples_epoch0002.png"]
    assert (ckpt / "losses.png").stat().st_size > 0
    # a longer run on the same data with the same checkpoint folder continues after epoch 2: epochs 1-2
    # are not trained (nor their sample grids drawn) again
    first_grid = (ckpt / "samples" / "samples_epoch0001.png").stat().st_mtime_ns
    more = AnoGANDetector(**{**SMALL, "epochs": 3}, map_iters=15, map_lr=0.05,
                          checkpoint_dir=str(ckpt)).fit(train_images)
    assert more.history_["d_loss"][:2] == anogan.history_["d_loss"] and len(more.history_["d_loss"]) == 3
    assert (ckpt / "samples" / "samples_epoch0001.png").stat().st_mtime_ns == first_grid
    assert (ckpt / "samples" / "samples_epoch0003.png").exists()
    # other data never resumes that checkpoint: the run starts from scratch
    other = AnoGANDetector(**{**SMALL, "epochs": 3}, checkpoint_dir=str(ckpt))
    other.history_ = {}
    other.train_gan(np.asarray(train_images.images)[::-1].copy())
    assert other.history_["d_loss"][:2] != anogan.history_["d_loss"]


def test_fanogan_reuses_a_finished_anogan_gan_from_its_checkpoint(train_images, tmp_path):
    ano = AnoGANDetector(**SMALL, map_iters=2, checkpoint_dir=str(tmp_path)).fit(train_images)
    grid = (tmp_path / "samples" / "samples_epoch0002.png").stat().st_mtime_ns
    f = FAnoGANDetector(**SMALL, kappa=0.5, checkpoint_dir=str(tmp_path)).fit(train_images)
    # same GAN (not retrained: no grid redrawn), and then an encoder of its own
    assert f.history_["d_loss"] == ano.history_["d_loss"] and len(f.history_["encoder_loss"]) == 2
    assert (tmp_path / "samples" / "samples_epoch0002.png").stat().st_mtime_ns == grid
    for k, v in ano.generator_.state_dict().items():
        assert torch.equal(v, f.generator_.state_dict()[k]), k
    # another GAN setting does not reuse it
    wider = FAnoGANDetector(**{**SMALL, "width": 4}, checkpoint_dir=str(tmp_path)).fit(train_images)
    assert wider.history_["d_loss"] != ano.history_["d_loss"]


def test_mapping_lowers_each_loss_and_does_not_depend_on_the_batch(anogan, test_set):
    from cxrad.detectors.graph import run_graph
    images = np.asarray(test_set.images[:4])
    together = anogan.score_arrays(images)
    alone = [anogan.score_arrays(images[i:i + 1])["score"][0] for i in range(4)]
    np.testing.assert_allclose(alone, together["score"], rtol=1e-6)
    graph = anogan.scoring_graph()
    graph.iters = 0  # the start points, unmapped
    start = run_graph(graph.measure, [images], "cpu")
    assert (together["score"] < start["score"]).all()  # the mapping reduced every image's loss
    np.testing.assert_allclose(together["score"], (1 - anogan.lam) * together["residual"]
                               + anogan.lam * together["discrimination"], rtol=1e-5)


def test_maps_reconstructions_and_features(anogan, fanogan, test_set):
    images = np.asarray(test_set.images[:3])
    for det in (anogan, fanogan):
        out = det.outputs(images)
        recon, amap = out["recon"], out["map"]
        assert recon.shape == amap.shape == (3, 32, 32) and recon.min() >= 0 and recon.max() <= 1
        np.testing.assert_allclose(amap, np.abs(images / 255.0 - recon), atol=1e-6)
        assert out["features"].shape == (3, 16 * 32)
        if det is anogan:  # the AnoGAN residual is the anomaly map summed over pixels
            np.testing.assert_allclose(out["residual"], amap.sum((1, 2)), rtol=1e-4)


@pytest.mark.parametrize("which", ["anogan", "fanogan"])
def test_save_load_round_trip(which, request, test_set, tmp_path):
    det = request.getfixturevalue(which)
    before = det.score(test_set)
    assert list(det.components) == ["residual", "discrimination"]
    assert (before["error"] == "").all() and np.isfinite(before["score"]).all()
    loaded = load_detector(det.save(tmp_path / which))
    assert type(loaded) is type(det) and loaded.get_params()["z_dim"] == 10
    after = loaded.score(test_set)
    np.testing.assert_allclose(after["score"], before["score"], rtol=1e-5)
    assert loaded.history_["d_loss"] == det.history_["d_loss"]
    if which == "fanogan":
        assert len(loaded.history_["encoder_loss"]) == 2


def test_crossing_threshold_by_calibration(fanogan, test_set, tmp_path):
    from cxrad.detectors.thresholds import crossing_threshold, operating_point
    t = fanogan.set_operating_point(operating_point(fanogan, "crossing", labelled=test_set))
    scores = fanogan.score(test_set)
    labels = test_set.labels
    assert t == pytest.approx(crossing_threshold(scores["score"][labels == 0], scores["score"][labels == 1]))
    assert fanogan.threshold_rule_ == "crossing"
    assert (fanogan.predict(test_set) == (scores["score"] > t)).all()
    loaded = load_detector(fanogan.save(tmp_path / "cal"))
    assert loaded.threshold_rule_ == "crossing" and loaded.threshold_ == pytest.approx(t)
    fanogan.set_operating_point(operating_point(fanogan, "stored", rule="quantile"))


def test_diverging_mapping_is_an_error_row_not_a_crash(anogan, test_set, monkeypatch):
    G = anogan.generator_
    real_forward = G.forward

    def poisoned(z):  # the second image of a batch diverges
        out = real_forward(z).clone()
        out[1] = torch.nan
        return out

    images = np.asarray(test_set.images[12:16])  # not scored elsewhere, so nothing is cached
    monkeypatch.setattr(G, "forward", poisoned)
    table = anogan.score(images)
    assert table["error"].tolist()[1].startswith("score is not finite")
    assert (table["error"].drop(index=1) == "").all() and np.isfinite(table["score"].drop(index=1)).all()
    assert np.isnan(anogan.predict(images)[1])
    monkeypatch.undo()
    clean = anogan.score(images)
    # the poisoned image did not disturb the others
    np.testing.assert_allclose(clean["score"].drop(index=1), table["score"].drop(index=1), rtol=1e-4)


def test_wrong_architecture_or_size_is_refused(anogan, fanogan, tmp_path, rewrite_weights):
    path = anogan.save(tmp_path / "a")
    with pytest.raises(BundleError, match="'anogan' model, not a 'fanogan'"):
        FAnoGANDetector.load(path)
    doc = json.loads((path / "model.json").read_text())
    doc["params"]["image_size"] = 64
    resign(path, doc)
    with pytest.raises(BundleError, match="preprocessing .* does not match"):
        load_detector(path)
    doc["preprocessing"]["size"] = 64  # metadata consistent with itself, weights still for 32 px
    resign(path, doc)
    with pytest.raises(BundleError, match="architecture/size.*32px"):
        load_detector(path)
    # consistent metadata but weights of another width: the state_dict mismatch is refused too
    doc["params"]["image_size"], doc["preprocessing"]["size"], doc["params"]["width"] = 32, 32, 16
    doc["state"]["architecture"] = "DCGAN 32px, z 10, width 16"
    resign(path, doc)
    with pytest.raises(BundleError, match="weights do not fit a anogan"):
        load_detector(path)
    # an f-AnoGAN bundle without its encoder
    fpath = fanogan.save(tmp_path / "f")
    rewrite_weights(fpath, lambda tensors: {k: v for k, v in tensors.items() if ".E." not in k})
    with pytest.raises(BundleError, match="weights do not fit"):
        load_detector(fpath)


def test_cli_trains_with_the_report_preset(tmp_path, cache_dir, capsys):
    from cxrad.frontends.cli import main
    import yaml
    preset = yaml.safe_load(PRESET.read_text())
    assert preset["image_size"] == 256 and preset["params"]["z_dim"] == 10
    assert preset["params"]["optimizer"] == "rmsprop" and preset["threshold"] == "crossing"
    samples = ROOT / "src" / "cxrad" / "data" / "samples"
    out = tmp_path / "model"
    rc = main(["train", "--config", "anogan_tb", "--data", str(samples / "kermany224"),
               "--split", "train", "--calibration-data", str(samples / "kermany224" / "test"), "--image-size", "32",
               "--epochs", "1", "--param", "width=4", "--param", "map_iters=3", "--out", str(out), "--quiet",
               "--cache-dir", str(cache_dir)])
    assert rc == 0, capsys.readouterr().err
    det = load_detector(out)
    assert det.kind == "anogan" and det.optimizer == "rmsprop" and (det.lr_d, det.lr_g) == (4e-4, 2e-4)
    assert det.z_dim == 10 and det.lam == 0.1 and det.threshold_rule_ == "crossing"
    assert "threshold crossing" in capsys.readouterr().out


def test_cli_preset_without_calibration_data_stops_before_training(tmp_path, capsys):
    from cxrad.frontends.cli import main
    rc = main(["train", "--config", "configs/anogan_tb.yaml", "--data",
               str(ROOT / "src" / "cxrad" / "data" / "samples" / "kermany224"), "--out", str(tmp_path / "m"), "--quiet"])
    assert rc == 1 and "crossing threshold needs --calibration-data" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
