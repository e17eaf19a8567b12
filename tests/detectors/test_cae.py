"""The seed CAE: architecture as specified, its scores (reconstruction MSE, latent KDE, OR rule) and fitting."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import GridSearchCV
from scipy.special import logsumexp
from sklearn.neighbors import KernelDensity
from torch import nn

from cxrad.data import ImageSet, load_images
from cxrad.errors import DataError, NotFittedError
from cxrad.detectors.cae import CAE, CAEDetector
from cxrad.detectors.parts.kde import BANDWIDTHS, kde_bandwidth, log_density, squared_distances
from cxrad.detectors.cae.model import keras_parameter_count
from cxrad.training import to_tensor


# ------------------------------------------------------------------------------------------ architecture
def test_seed_cae_has_the_specified_parameters_and_layer_shapes():
    model = CAE(channels=3, latent_dim=128, image_size=128)
    assert keras_parameter_count(model) == 2_127_203
    assert sum(p.numel() for p in model.parameters()) == 2_126_979  # + 224 BatchNorm statistics

    shapes = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda mod, inp, out: shapes.append((type(mod).__name__, tuple(out.shape[1:]))))
             for m in leaves]
    recon, z = model.eval()(torch.zeros(2, 3, 128, 128))
    for h in hooks:
        h.remove()
    expected = []
    for cout, side in ((8, 128), (16, 64), (32, 32)):  # Conv3x3 same -> BN -> LeakyReLU -> MaxPool2
        expected += [("Conv2d", (cout, side, side)), ("BatchNorm2d", (cout, side, side)),
                     ("LeakyReLU", (cout, side, side)), ("MaxPool2d", (cout, side // 2, side // 2))]
    expected += [("Flatten", (8192,)), ("Linear", (128,)),  # encoder ends in the 128-d latent
                 ("Linear", (8192,)), ("LeakyReLU", (8192,))]  # decoder dense, then reshape 32x16x16
    for cout, side in ((32, 16), (16, 32), (8, 64)):  # ConvTranspose3x3 -> BN -> LeakyReLU -> Upsample2
        expected += [("ConvTranspose2d", (cout, side, side)), ("BatchNorm2d", (cout, side, side)),
                     ("LeakyReLU", (cout, side, side)), ("Upsample", (cout, side * 2, side * 2))]
    expected += [("Conv2d", (3, 128, 128)), ("Sigmoid", (3, 128, 128))]
    assert shapes == expected
    assert recon.shape == (2, 3, 128, 128) and z.shape == (2, 128)
    kernels = [m.kernel_size for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert kernels == [(3, 3)] * 7


def test_one_channel_option():
    one = CAE(channels=1, image_size=32)
    assert one(torch.zeros(1, 1, 32, 32))[0].shape == (1, 1, 32, 32)
    assert keras_parameter_count(one) < keras_parameter_count(CAE(channels=3, image_size=32))
    with pytest.raises(ValueError, match="multiple of 8"):
        CAE(image_size=36)


# --------------------------------------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def tiny(tiny_cae_bundle):
    return CAEDetector.load(tiny_cae_bundle, device="cpu")


@pytest.fixture(scope="module")
def test_images(sample_manifest, cache_dir):
    test = sample_manifest[sample_manifest["orig_split"] == "test"]
    df = test.groupby("label").head(10)
    return load_images(df, CAEDetector(image_size=32).prep, cache_dir=cache_dir)


def test_components_are_reconstruction_mse_and_kde_log_density(tiny, test_images):
    table = tiny.score(test_images)
    x = to_tensor(np.asarray(test_images.images), 3)
    with torch.no_grad():
        recon, z = tiny.model_(x)
    mse = ((recon - x) ** 2).mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(table["recon_error"], mse, rtol=1e-5)
    zs = (z.numpy().astype(np.float64) - tiny.latent_mean_) / tiny.latent_sd_
    h, pts = tiny.kde_bandwidth_, tiny.kde_latents_.astype(np.float64)
    d2 = ((zs[:, None, :] - pts[None]) ** 2).sum(-1)  # the Gaussian KDE, term by term
    exact = logsumexp(-d2 / (2 * h * h), axis=1) - np.log(len(pts)) - 0.5 * pts.shape[1] * np.log(2 * np.pi * h * h)
    np.testing.assert_allclose(table["log_density"], exact, rtol=1e-6)
    # the score: the larger of the two components, each standardised on held-out normal images
    (me, se), (md, sd) = tiny.component_stats_["recon_error"], tiny.component_stats_["neg_log_density"]
    both = np.maximum((table["recon_error"] - me) / se, (-table["log_density"] - md) / sd)
    np.testing.assert_allclose(table["score"], both, rtol=1e-6)
    assert tiny.kde_latents_.shape == (tiny.n_train_, 128)


def test_kde_bandwidth_is_the_cross_validation_choice(tiny):
    """The one-distance-matrix search picks what scikit-learn's GridSearchCV picks where scikit-learn's
    tree-based KDE is exact (low dimensions, the tiny model's latents)."""
    grid = GridSearchCV(KernelDensity(), {"bandwidth": BANDWIDTHS}, cv=5).fit(tiny.kde_latents_)
    assert tiny.kde_bandwidth_ == pytest.approx(grid.best_params_["bandwidth"])
    rng = np.random.default_rng(0)
    for z in (rng.normal(size=(97, 5)), rng.normal(size=(60, 40)) * rng.uniform(0.2, 3, 40)):
        grid = GridSearchCV(KernelDensity(), {"bandwidth": BANDWIDTHS}, cv=5).fit(z)
        assert kde_bandwidth(z) == pytest.approx(grid.best_params_["bandwidth"])


def test_kde_is_exact_where_the_tree_estimate_is_not():
    """128-d latents of the seed's size: the log-density is the exact sum; scikit-learn's tree estimate is
    far off at small bandwidths (which is why the search and the score compute it directly)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 128)) + 0.5 * rng.normal(size=(400, 128))
    z = (z - z.mean(0)) / z.std(0)
    train, query, h = z[80:], z[:5], 0.4642
    d2 = ((query[:, None] - train[None]) ** 2).sum(-1)
    exact = logsumexp(-d2 / (2 * h * h), axis=1) - np.log(len(train)) - 64 * np.log(2 * np.pi * h * h)
    def kde_log_density(q, p, h):
        q, p = torch.as_tensor(q), torch.as_tensor(p)
        return log_density(squared_distances(q, p), len(p), p.shape[1], h).numpy()
    np.testing.assert_allclose(kde_log_density(query, train, h), exact, rtol=1e-9)
    folds = np.array_split(np.arange(len(z)), 5)
    def cv(h):
        return sum(kde_log_density(z[f], np.delete(z, f, 0), h).sum() for f in folds)
    assert kde_bandwidth(z) == BANDWIDTHS[int(np.argmax([cv(b) for b in BANDWIDTHS]))]


def test_score_is_the_or_rule(tiny, test_images):
    table = tiny.score(test_images)
    for t in np.quantile(table["score"], [0.2, 0.5, 0.8]):
        ct = tiny.component_thresholds(t)
        either = (table["recon_error"] > ct["recon_error_above"]) | (table["log_density"] < ct["log_density_below"])
        flagged = table["score"] > t
        # equal except for floating-point ties at the boundary
        assert (either == flagged).mean() == 1.0
    stored = tiny.component_thresholds()
    assert set(stored) == {"recon_error_above", "log_density_below"}


def test_score_table_and_protocol(tiny, test_images, tmp_path):
    table = tiny.score(test_images)
    assert len(table) == len(test_images)
    for col in ("path", "label", "recon_error", "log_density", "score", "percentile", "anomalous", "error"):
        assert col in table
    assert (table["error"] == "").all() and table["percentile"].between(0, 100).all()
    assert (table["anomalous"].astype(bool) == (table["score"] > tiny.threshold_)).all()
    np.testing.assert_array_equal(tiny.predict(test_images), table["anomalous"].astype(float))
    # paths, arrays and image sets give the same scores
    by_path = tiny.score(list(test_images.frame["path"]))
    np.testing.assert_allclose(by_path["score"], table["score"], rtol=1e-6)
    np.testing.assert_allclose(tiny.score(np.asarray(test_images.images))["score"], table["score"], rtol=1e-6)
    # a bad file is an error row with no verdict; the others are still scored
    (tmp_path / "bad.png").write_bytes(b"nope")
    mixed = [test_images.frame["path"][0], str(tmp_path / "bad.png")]
    verdicts = tiny.predict(mixed)
    assert verdicts[0] == float(table["anomalous"][0]) and np.isnan(verdicts[1])
    out = tiny.outputs(np.asarray(test_images.images[:3]))
    assert out["map"].shape == (3, 32, 32) and (out["map"] >= 0).all()
    np.testing.assert_allclose(out["map"].mean(axis=(1, 2)), table["recon_error"][:3], rtol=1e-4)
    assert out["recon"].shape == (3, 32, 32) and 0 <= out["recon"].min() and out["recon"].max() <= 1
    assert out["features"].shape == (3, 128)


@pytest.mark.parametrize("mode, component, sign", [("recon", "recon_error", 1), ("density", "log_density", -1)])
def test_single_component_score_modes(tiny, test_images, mode, component, sign):
    old, tiny.score_mode = tiny.score_mode, mode
    try:
        table = tiny.score(test_images)
    finally:
        tiny.score_mode = old
    order_score = np.argsort(table["score"].to_numpy(), kind="stable")
    order_comp = np.argsort(sign * table[component].to_numpy(), kind="stable")
    np.testing.assert_array_equal(order_score, order_comp)


# ------------------------------------------------------------------------------------------------- fit
def _images(sample_manifest, cache_dir, n=24, size=32):
    df = sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)].head(n)
    return load_images(df, CAEDetector(image_size=size).prep, cache_dir=cache_dir)


def test_fit_ignores_abnormal_rows_holds_out_val_and_is_seeded(sample_manifest, cache_dir):
    df = pd.concat([sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)]
                    .head(16), sample_manifest[sample_manifest["label"] == 1].head(16)])
    images = load_images(df, CAEDetector(image_size=32).prep, cache_dir=cache_dir)
    assert (images.labels == 1).sum() == 16
    a = CAEDetector(image_size=32, epochs=1, device="cpu", val_fraction=0.25).fit(images)
    assert a.n_train_ + a.n_val_ == 16 and a.n_val_ >= 2  # only the 16 normal images
    assert len(a.normal_scores_) == a.n_val_ and (np.diff(a.normal_scores_) >= 0).all()
    b = CAEDetector(image_size=32, epochs=1, device="cpu", val_fraction=0.25).fit(images)
    np.testing.assert_array_equal(a.normal_scores_, b.normal_scores_)
    assert a.thresholds_["quantile"] == a.threshold_


def test_fit_small_sets_keep_two_validation_images(sample_manifest, cache_dir):
    # 12 normals, 10% held out: the patient split alone would hold out one image, too few for thresholds
    det = CAEDetector(image_size=32, epochs=1, device="cpu").fit(_images(sample_manifest, cache_dir, n=12))
    assert det.n_val_ >= 2 and det.n_train_ + det.n_val_ == 12


def test_fit_refuses_empty_and_abnormal_only(sample_manifest, cache_dir):
    det = CAEDetector(image_size=32, epochs=1, device="cpu")
    with pytest.raises(DataError, match="empty"):
        det.fit(ImageSet.from_arrays(np.zeros((0, 32, 32), np.uint8)))
    ab = sample_manifest[sample_manifest["label"] == 1].head(12)
    with pytest.raises(DataError, match="no normal images"):
        det.fit(load_images(ab, det.prep, cache_dir=cache_dir))
    with pytest.raises(NotFittedError, match="not fitted"):
        det.score(np.zeros((1, 32, 32), np.uint8))
