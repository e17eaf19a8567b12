"""The seed CAE's KDE bandwidth: the exact one-matrix search against scikit-learn's GridSearchCV.

Trains the seed CAE (128 px, 10 epochs, seed 0) on kermany224's training normals, then compares on kermany224
test the bandwidth each search picks, the AUROC of the latent log-density with each, and each search's time.

    python benchmarks/kde_bandwidth.py        # about 5 minutes on 2 CPU cores; results/kde_bandwidth.md
"""
from __future__ import annotations

import time

import numpy as np
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity

from cxrad.data import load_images
from cxrad.evaluation.metrics import evaluate
from cxrad.detectors import CAEDetector
from cxrad.detectors.cae.detector import BANDWIDTHS, kde_bandwidth
from cxrad.data.protocols import load_protocol

CACHE = ".cache/cxrad"


def main() -> None:
    proto = load_protocol("kermany224")
    det = CAEDetector(epochs=10, seed=0, device="cpu")
    det.fit(load_images(proto.train, det.prep, cache_dir=CACHE))
    test = load_images(proto.test, det.prep, cache_dir=CACHE)
    latents = det.kde_latents_.astype(np.float64)

    t = time.time()
    grid = GridSearchCV(KernelDensity(), {"bandwidth": BANDWIDTHS}, cv=5).fit(latents)
    grid_s = time.time() - t
    t = time.time()
    exact_h = kde_bandwidth(latents)
    exact_s = time.time() - t

    comps = det.score_arrays(np.asarray(test.images))
    z = (det._forward(np.asarray(test.images))["z"] - det.latent_mean_) / det.latent_sd_
    tree = KernelDensity(bandwidth=grid.best_params_["bandwidth"]).fit(det.kde_latents_).score_samples(z)
    auroc = lambda s: evaluate(test.labels, s, n_boot=0)["auroc"]  # noqa: E731
    print(f"bandwidth: exact search {exact_h:.4f}, GridSearchCV {grid.best_params_['bandwidth']:.4f}")
    print(f"log-density AUROC: exact {auroc(-comps['log_density']):.4f}, GridSearchCV + tree KDE {auroc(-tree):.4f}")
    print(f"score (OR rule) AUROC: {auroc(comps['score']):.4f}")
    print(f"search time: GridSearchCV {grid_s:.1f} s, one-matrix {exact_s:.2f} s")


if __name__ == "__main__":
    main()
