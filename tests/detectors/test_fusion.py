"""Score fusion: members trained on the same normals, standardised on the held-out ones, averaged; persistence."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bundle_tools import resign

from cxrad.data import as_imageset, hold_out_normals
from cxrad.errors import BundleError
from cxrad.detectors import load_detector
from cxrad.frontends.cli import main
from cxrad.data import load_images
from cxrad.detectors.fusion import FusionDetector

pytestmark = pytest.mark.slow  # every test here trains GANs or several members

ROOT = Path(__file__).resolve().parents[2]
SMALL_MEMBERS = {"dae": {"image_size": 32, "epochs": 1, "width": 8, "depth": 3}, "regional": {"image_size": 64}}


@pytest.fixture(scope="module")
def images(sample_manifest, cache_dir):
    prep = FusionDetector(image_size=64).prep
    train = sample_manifest[sample_manifest["orig_split"] == "train"].head(40)
    test = sample_manifest[sample_manifest["orig_split"] == "test"].groupby("label").head(8)
    return load_images(train, prep, cache_dir=cache_dir), load_images(test, prep, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def fused(images):
    return FusionDetector(member_params=SMALL_MEMBERS, image_size=64, seed=0, device="cpu", batch_size=16) \
        .fit(images[0])


def test_score_is_the_mean_of_member_scores_standardised_on_held_out_normals(fused, images):
    test = images[1]
    table = fused.score(test)
    assert list(fused.components) == ["dae", "regional"] and (table["error"] == "").all()
    np.testing.assert_allclose(table["score"], table[["dae", "regional"]].mean(axis=1), rtol=1e-9)
    # each member scores the input resized to its own size: its raw score, standardised by the stored
    # median and IQR, which are those of its scores on the held-out normals
    for name, member in zip(fused.components, fused.members_):
        raw = member._run(np.asarray(as_imageset(test, member.prep).images), keep=("score",))["score"]
        median, scale = fused.standardise_[name]
        np.testing.assert_allclose(table[name], (raw - median) / scale, rtol=1e-4, atol=1e-4)
    # the held-out normals sit around 0 on every member's scale, so the fused threshold is a few units
    assert all(s > 0 for _, s in fused.standardise_.values())
    assert -1 < np.median(fused.normal_scores_) < 1 and fused.threshold_ > np.median(fused.normal_scores_)
    # one image alone scores as it does in the batch
    alone = fused.score(np.asarray(test.images[:1]))["score"].iloc[0]
    assert alone == pytest.approx(table["score"].iloc[0], rel=1e-6)


def test_pictures_come_from_the_first_member_that_has_them(fused, images):
    x = np.asarray(images[1].images[:3])
    out = fused.outputs(x)
    assert out["map"].shape == (3, 64, 64)  # the DAE's 32 px map, brought to the input size
    assert out["recon"].shape == (3, 64, 64)
    assert out["features"].shape[0] == 3


def test_save_load_round_trip_and_mismatched_members_refused(fused, images, tmp_path):
    fused.save(tmp_path / "m")
    again = load_detector(tmp_path / "m", device="cpu")
    assert isinstance(again, FusionDetector) and [m.kind for m in again.members_] == ["dae", "regional"]
    np.testing.assert_allclose(again.score(images[1])["score"], fused.score(images[1])["score"], rtol=1e-5)
    assert again.threshold_ == fused.threshold_
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    doc["params"]["members"] = ["regional", "dae"]
    resign(tmp_path / "m", doc)
    with pytest.raises(BundleError, match="members"):
        load_detector(tmp_path / "m", device="cpu")


def test_cae_member_keeps_its_or_rule_calibration(images, tmp_path):
    det = FusionDetector(members=["cae", "regional"], image_size=64, device="cpu", seed=0,
                         member_params={"cae": {"image_size": 64, "epochs": 1}}).fit(images[0])
    cae = det.members_[0]
    assert set(cae.component_stats_) == {"recon_error", "neg_log_density"}
    det.save(tmp_path / "c")
    np.testing.assert_allclose(load_detector(tmp_path / "c", device="cpu").score(images[1])["score"],
                               det.score(images[1])["score"], rtol=1e-5)


def test_bad_settings_are_refused_before_training():
    """Checked at fit (as scikit-learn does), before any member trains."""
    with pytest.raises(BundleError, match="unknown detector kind"):
        FusionDetector(members=("dae", "nope")).check_settings()
    with pytest.raises(ValueError, match="not members"):
        FusionDetector(members=("dae",), member_params={"regional": {}}).check_settings()
    with pytest.raises(ValueError, match="rule must be one of"):
        FusionDetector(rule="median").check_settings()
    with pytest.raises(ValueError, match="width must be"):  # a member's own setting
        FusionDetector(member_params={"dae": {"width": "wide"}}).fit(np.zeros((20, 64, 64), np.uint8))


def test_cli_trains_and_scores_a_fusion(sample_manifest, tmp_path, capsys, shared_data):
    data = tmp_path / "train.csv"
    sample_manifest[sample_manifest["orig_split"] == "train"].head(40).to_csv(data, index=False)
    out = tmp_path / "model"
    # the shipped config, with a smaller DAE for the test (a --param replaces the config's value)
    assert main(["train", "--config", "fusion", "--data", str(data), "--image-size",
                 "64", "--epochs", "1", "--param", "member_params={dae: {image_size: 32, width: 8, depth: 3}}",
                 "--out", str(out), "--quiet"]) == 0
    det = load_detector(out, device="cpu")
    assert tuple(det.members) == ("dae", "regional") and det.rule == "mean" and det.kind == "fusion"
    assert det.members_[0].epochs == 1 and len(det.history_["dae.train_loss"]) == 1  # --epochs reached the DAE
    image = shared_data / "kermany224" / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"
    capsys.readouterr()
    assert main(["score", str(image), "--model", str(out), "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert {"dae", "regional", "score"} <= set(row) and np.isfinite(row["score"])


def test_a_member_that_diverges_on_every_normal_is_a_clear_error(images, monkeypatch):
    from cxrad.data import DataError
    from cxrad.detectors.regional.graph import RegionalGraph

    real = RegionalGraph.measure
    monkeypatch.setattr(RegionalGraph, "measure",
                        lambda self, x: {k: v * np.nan if v.ndim == 1 else v for k, v in real(self, x).items()})
    with pytest.raises(DataError, match="regional normal validation"), pytest.warns(RuntimeWarning):
        FusionDetector(member_params=SMALL_MEMBERS, image_size=64, device="cpu").fit(images[0])


def test_dashboard_scores_uploads_with_a_fusion_model(fused, shared_data):
    from cxrad.frontends.app.logic import score_uploads

    xray = shared_data / "kermany224" / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"
    good, bad = score_uploads(fused, [("x.jpeg", xray.read_bytes()), ("broken.png", b"not an image")])
    assert np.isfinite(good.score) and good.heatmap is not None and good.reconstruction is not None
    assert good.heatmap.shape[:2] == good.image.shape[:2]
    assert bad.error and bad.score is None



def test_fit_scores_the_held_out_normals_once_per_member(images, monkeypatch):
    calls = []
    det = FusionDetector(member_params=SMALL_MEMBERS, image_size=64, seed=0, device="cpu", batch_size=16)
    from cxrad.detectors.dae.graph import DAEGraph
    from cxrad.detectors.regional.graph import RegionalGraph
    for cls in (DAEGraph, RegionalGraph):
        monkeypatch.setattr(cls, "measure", lambda self, x, _orig=cls.measure, _k=cls.__name__:
                            calls.append(_k) or _orig(self, x))
    det.fit(images[0])
    chunks = -(-det.n_val_ // 16)
    assert sorted(calls) == ["DAEGraph"] * chunks + ["RegionalGraph"] * chunks
    # the thresholds come from the scores a fresh scoring of the same held-out normals gives
    _, val = hold_out_normals(images[0].subset(images[0].labels == 0), det.val_fraction, det.seed)
    again = det.score_arrays(np.asarray(val.images))["score"]
    np.testing.assert_allclose(np.sort(again), det.normal_scores_, rtol=1e-6)


# ------------------------------------------------------------------------------ fusion of fitted models
@pytest.fixture(scope="module")
def fitted_pair(sample_manifest, cache_dir):
    """Two DAEs fitted apart on the same normal files with the same seed (so the same held-out films), as the
    shipped fusion's members were: one trained longer and wider."""
    from cxrad.detectors import DAEDetector
    train = sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)].head(40)
    common = dict(image_size=32, depth=3, seed=0, device="cpu", batch_size=16, cache_dir=str(cache_dir))
    a = DAEDetector(width=8, epochs=1, **common).fit(train)
    b = DAEDetector(width=16, epochs=2, **common).fit(train)
    return a, b, train


def test_fitted_models_fuse_without_training_calibrated_on_normals_no_member_saw(fitted_pair, images, cache_dir,
                                                                                 tmp_path):
    a, b, train = fitted_pair
    fused = FusionDetector.from_fitted([a, b], train, cache_dir=str(cache_dir))
    # every training film of a member is left out: what remains is exactly the shared held-out films
    assert (fused.n_val_, fused.n_calibration_seen_) == (a.n_val_, a.n_train_)
    assert fused.components == ("dae_0", "dae_1") and fused.train_fingerprint_ == a.train_fingerprint_
    test = as_imageset(images[1], a.prep)
    x = np.asarray(test.images)
    expected = 0
    for m in (a, b):  # each member's score standardised by the median and IQR of its own held-out normal scores
        q1, med, q3 = np.percentile(m.normal_scores_, [25, 50, 75])
        expected = expected + (m.score_arrays(x)["score"] - med) / ((q3 - q1) / 1.349)
    np.testing.assert_allclose(fused.score_arrays(x)["score"], expected / 2, rtol=1e-6)
    # the fused normal scores are those of the held-out films, and the threshold sits at 95 % of them
    _, val = hold_out_normals(as_imageset(train, a.prep, str(cache_dir)), a.val_fraction, a.seed)
    np.testing.assert_allclose(np.sort(fused.score_arrays(np.asarray(val.images))["score"]), fused.normal_scores_,
                               rtol=1e-6)
    assert np.mean(fused.normal_scores_ <= fused.threshold_) == pytest.approx(0.95, abs=0.1)
    # it saves and loads as any bundle, remembering what each member trained on
    again = load_detector(fused.save(tmp_path / "f"), device="cpu")
    np.testing.assert_allclose(again.score_arrays(x)["score"], fused.score_arrays(x)["score"], rtol=1e-6)
    assert [m.train_fingerprint_ for m in again.members_] == [a.train_fingerprint_] * 2
    from cxrad.evaluation.evaluate import training_overlap
    assert training_overlap(again, as_imageset(train, a.prep, str(cache_dir))) == a.n_train_


def test_a_fusion_of_fitted_models_refuses_what_it_cannot_calibrate_honestly(fitted_pair, sample_manifest,
                                                                             cache_dir):
    from cxrad.data import DataError
    from cxrad.detectors import DAEDetector
    a, b, train = fitted_pair
    _, seen = hold_out_normals(as_imageset(train, a.prep, str(cache_dir)), a.val_fraction, a.seed)
    trained_on = train[~train["sha256"].isin(set(seen.frame["sha256"]))]
    with pytest.raises(DataError, match="0 of the .* unseen by every member"):
        FusionDetector.from_fitted([a, b], trained_on, cache_dir=str(cache_dir))
    # a member fitted on arrays records no training files, and shares no training set with the other
    arrays = DAEDetector(image_size=32, width=8, depth=3, epochs=1, seed=1, device="cpu").fit(
        np.asarray(as_imageset(train, a.prep, str(cache_dir)).images)[:30])
    with pytest.raises(DataError, match="member 1 .* records neither"):
        FusionDetector.from_fitted([a, arrays], train, cache_dir=str(cache_dir))
    padded = DAEDetector(image_size=32, width=8, depth=3, epochs=1, resize="pad", device="cpu").fit(train)
    with pytest.raises(ValueError, match="differ in resize"):
        FusionDetector.from_fitted([a, padded], train, cache_dir=str(cache_dir))


def test_cli_fuse_writes_a_bundle_that_scores(fitted_pair, tmp_path, capsys, shared_data):
    a, b, train = fitted_pair
    data = tmp_path / "normals.csv"
    train.to_csv(data, index=False)
    a.save(tmp_path / "a"), b.save(tmp_path / "b")
    assert main(["fuse", str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(data), "--out",
                 str(tmp_path / "f"), "--quiet", "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert f"from {a.n_val_} normal films no member trained on ({a.n_train_} left out" in said
    image = shared_data / "kermany224" / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"
    assert main(["score", str(image), "--model", str(tmp_path / "f"), "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert {"dae_0", "dae_1", "score"} <= set(row) and np.isfinite(row["score"])
    assert main(["fuse", str(tmp_path / "a"), "--data", str(data), "--out", str(tmp_path / "g")]) == 1
    assert "at least two models" in capsys.readouterr().err
