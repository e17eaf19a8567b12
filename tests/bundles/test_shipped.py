"""The models shipped inside the package: they load, carry a model card, never came from TB images, and
`cxrad score` uses the default one when no model is named."""
from __future__ import annotations

import json

import pytest

from cxrad.bundles import read_meta
from cxrad.detectors import load_detector
from cxrad.frontends.cli import main
from cxrad.bundles import PRETRAINED_DIR, available, default_name, resolve


def test_a_default_model_is_shipped_and_every_shipped_model_is_sound():
    models = available()
    assert default_name() in models, "the package must ship its default model"
    for name, path in models.items():
        meta = read_meta(path)
        size = sum(f.stat().st_size for f in path.iterdir())
        assert size < 12 * 1024 * 1024, f"{name} is {size} bytes; shipped models stay a few MB"
        assert not list(path.glob("*.pt")) and not list(path.glob("*.pkl")), "only JSON and safetensors ship"
        card = (path / "MODEL_CARD.md").read_text()
        assert "not a diagnostic device" in card and "Training data" in card and "AUROC" in card
        evaluation = json.loads((path / "evaluation.json").read_text())
        assert set(evaluation) >= {"kermany224", "tb", "nih", "covid"}
        assert meta["training_data"]["fingerprint"] and meta["training_data"]["n_train"] > 1000
        load_detector(path, device="cpu")


def test_shipped_training_manifest_never_holds_tb_images():
    """The default models are trained on the covid protocol's training images; check that set itself."""
    from cxrad.data.protocols import load_protocol
    train = load_protocol("covid").train
    assert not train["source"].str.contains("tb").any()
    assert set(train["source"]) == {"kermany224", "nih_cxr14_talo"}


def test_score_without_a_model_uses_the_shipped_default(shared_data, capsys, tmp_path):
    normal = shared_data / "kermany224" / "test" / "NORMAL" / "IM-0001-0001.jpeg"
    pneumonia = next((shared_data / "kermany224" / "test" / "PNEUMONIA").glob("*.jpeg"))
    code = main(["score", str(normal), str(pneumonia), "--json", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == [str(normal), str(pneumonia)]
    assert all(r["error"] == "" and 0 <= r["percentile"] <= 100 for r in rows)
    assert (tmp_path / "scores.csv").exists()
    assert resolve(None) == PRETRAINED_DIR / default_name()


def test_unknown_shipped_name_is_a_clear_error(capsys):
    assert main(["score", "x.png", "--model", "no-such-model"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cxrad: error:") and "no-such-model" in err[-1]


@pytest.mark.parametrize("name", sorted(available()))
def test_shipped_model_beats_chance_on_the_bundled_kermany_samples(name, sample_manifest):
    """A sanity floor on images it never trained on (bundled test samples: 30 normal, 30 pneumonia)."""
    from sklearn.metrics import roc_auc_score
    det = load_detector(available()[name], device="cpu")
    test = sample_manifest[(sample_manifest["orig_split"] == "test") & (sample_manifest["source"] == "kermany224")]
    table = det.score(test)
    assert roc_auc_score(table["label"], table["score"]) > 0.5


def test_shipped_models_score_as_they_did_before_the_layout_change():
    """Scores of the bundled sample test images recorded with cxrad e4b599e (the code before each detector owned
    its scoring graph): the shipped bundles, unchanged, score the same within 1e-5 (relative). Float32 sums are
    reduced in an order that depends on torch's threads and the machine's load: a fresh CI machine measured a
    relative 1.06e-6; any change to a scoring graph moves scores by orders of magnitude more."""
    from pathlib import Path

    import numpy as np

    from cxrad.data import bundled_samples, load_images
    reference = json.loads((Path(__file__).with_name("shipped_scores_e4b599e.json")).read_text())["models"]
    samples = bundled_samples()
    assert set(reference) <= set(available())
    for name, expected in reference.items():
        det = load_detector(name, device="cpu")
        rows = samples[samples["path"].map(lambda p: p.split("samples/")[-1]).isin(expected["files"])]
        images = load_images(rows, det.prep)
        assert [p.split("samples/")[-1] for p in images.frame["path"]] == expected["files"]
        got = det.score_arrays(np.asarray(images.images))
        for key in ("score", "box_residual", "top_residual"):
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=0, err_msg=f"{name} {key}")


def test_the_default_fuses_the_shipped_dae_with_a_shorter_run_of_its_recipe(sample_manifest):
    """dae-cxr-64-fused: member 0 is dae-cxr-64-300k itself, member 1 the same recipe at 46 epochs; the score is
    the mean of both standardised by their own held-out normals, and its threshold comes from films neither saw."""
    import numpy as np

    from cxrad.data import load_images
    from cxrad.detectors.thresholds import robust_scale
    fused, dae = load_detector("dae-cxr-64-fused", device="cpu"), load_detector("dae-cxr-64-300k", device="cpu")
    assert default_name() == "dae-cxr-64-fused" and default_name("dae") == "dae-cxr-64-300k"
    assert [m.epochs for m in fused.members_] == [229, 46] and fused.train_hashes_ == dae.train_hashes_
    assert fused.n_val_ == dae.n_val_ == 146  # the held-out films of both members' one split
    x = np.asarray(load_images(sample_manifest[sample_manifest["orig_split"] == "test"], fused.prep).images)
    got = fused.score_arrays(x)
    np.testing.assert_allclose(fused.members_[0]._run(x, keep=("score",))["score"], dae.score_arrays(x)["score"],
                               rtol=1e-6)
    median, scale = robust_scale(dae.normal_scores_)
    np.testing.assert_allclose(got["dae_0"], (dae.score_arrays(x)["score"] - median) / scale, rtol=1e-6)
    np.testing.assert_allclose(got["score"], (got["dae_0"] + got["dae_1"]) / 2, rtol=1e-9)


def test_commands_that_need_one_dae_start_from_the_shipped_dae():
    """`cxrad train` trains a DAE by default and `cxrad adapt` adapts the shipped DAE, not the fusion."""
    from cxrad.detectors.adapted import AdaptedDetector
    from cxrad.frontends.cli.train import default_kind
    assert default_kind() == "dae"
    assert AdaptedDetector()._load_base().weights_sha256_ == read_meta(resolve("dae-cxr-64-300k"))["weights"]["sha256"]
