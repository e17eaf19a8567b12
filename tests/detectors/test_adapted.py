"""Adapting a DAE to a site with its unlabelled films (`cxrad adapt`): both networks are kept, the adapted one
starts from the base's weights, and the robust loss leaves out each batch's worst-fitting films."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrad.detectors import AdaptedDetector, DAEDetector, load_detector
from cxrad.frontends.cli import main


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_sets):
    train, _ = small_sets[32]
    det = DAEDetector(image_size=32, width=8, depth=3, epochs=2, batch_size=16, device="cpu").fit(train)
    return det.save(tmp_path_factory.mktemp("base") / "dae")


def test_the_adapted_network_starts_from_the_base_and_the_base_is_kept(base, small_sets):
    from cxrad.data import ImageSet
    train, test = small_sets[32]
    backlog = ImageSet(np.concatenate([train.images, test.images]),
                       __import__("pandas").concat([train.frame, test.frame]).assign(label=0), test.prep)
    det = AdaptedDetector(base=str(base), image_size=32, epochs=2, batch_size=16, device="cpu").fit(backlog)
    original = load_detector(base, device="cpu")
    for k, v in original.model_.state_dict().items():
        assert torch.equal(v, det.base_.state_dict()[k]), k  # the base network is the bundle's, untouched
    assert any(not torch.equal(v, det.site_.state_dict()[k]) for k, v in original.model_.state_dict().items())
    table = det.score(test)
    np.testing.assert_allclose(table["base_residual"], original.score(test)["score"], rtol=1e-6)
    np.testing.assert_allclose(table["score"], table["discrepancy"])
    assert (table["discrepancy"] > 0).all()
    with pytest.raises(Exception, match="takes 32 px"):
        AdaptedDetector(base=str(base), image_size=64, epochs=1, device="cpu").fit(backlog)


def test_the_robust_loss_leaves_out_the_worst_fitting_films(small_sets):
    train, _ = small_sets[32]
    settings = dict(image_size=32, width=8, depth=3, epochs=2, batch_size=16, device="cpu", seed=0)
    plain = DAEDetector(**settings).fit(train)
    robust = DAEDetector(**settings, trim=0.5).fit(train)
    assert robust.history_["train_loss"][0] < plain.history_["train_loss"][0]  # only the best-fitting half counts
    assert "trim" not in plain.learned_params() and robust.learned_params()["trim"] == 0.5


def test_cli_adapts_a_model_to_a_folder_of_site_films(base, sample_manifest, tmp_path, capsys):
    backlog = tmp_path / "backlog"
    backlog.mkdir()
    for p in sample_manifest[sample_manifest["orig_split"] == "test"]["path"].head(24):
        (backlog / p.replace("/", "_")).write_bytes(open(p, "rb").read())
    out = tmp_path / "adapted"
    code = main(["adapt", str(base), "--unlabelled", str(backlog), "--out", str(out), "--epochs", "1",
                 "--device", "cpu", "--quiet", "--trim", "0.2"])
    assert code == 0, capsys.readouterr().err
    det = load_detector(out, device="cpu")
    assert det.kind == "adapted" and det.trim == 0.2 and det.image_size == 32 and det.n_train_ + det.n_val_ == 24
    result = main(["adapt", str(tmp_path / "missing"), "--unlabelled", str(backlog), "--out", str(tmp_path / "x")])
    assert result == 1
