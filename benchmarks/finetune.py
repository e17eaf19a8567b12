"""A site's own normals: how much do a few hundred local normal films buy? On the tb protocol (Shenzhen +
Montgomery, adult TB screening; its training normals are ~190 films of held-out-by-patient normals), compare

- the shipped (or any) model as it is, never having seen a TB-set image;
- that model fine-tuned on the tb training normals (``cxrad train --init MODEL``), 3 seeds;
- the same detector trained from scratch on them with the same number of training samples, 3 seeds;
- patch features of the model's encoder fitted on them, no training at all (``patchcore`` with
  ``backbone=MODEL``), 3 seeds (the coreset's random start);

    python benchmarks/finetune.py --init src/cxrad/bundles/pretrained/dae-cxr-64 --epochs 60 --seeds 0 1 2

Writes benchmarks/results/finetune.md and finetune.jsonl (every run, appended as it ends; runs already
in it are skipped, so a killed benchmark resumes).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cxrad.data import load_images
from cxrad.evaluation.metrics import evaluate
from cxrad.detectors import PatchCoreDetector, load_detector
from cxrad.data.protocols import load_protocol

HERE = Path(__file__).resolve().parent


def auroc(det, test) -> float:
    return evaluate(test.labels, det.decision_function(test), n_boot=0)["auroc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", default="src/cxrad/bundles/pretrained/dae-cxr-64", help="the starting bundle")
    ap.add_argument("--epochs", type=int, default=60, help="epochs over the tb training normals")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache-dir", default=".cache/cxrad")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    proto = load_protocol("tb")
    base = load_detector(args.init, device="cpu")
    train = load_images(proto.train, base.prep, cache_dir=args.cache_dir)
    test = load_images(proto.test, base.prep, cache_dir=args.cache_dir)
    out = Path(args.out)
    log = out / "finetune.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    runs = [r for r in runs if r["init"] == args.init and r["epochs"] == args.epochs]

    def record(variant: str, seed, fit) -> None:
        # each finished run is appended at once, so a killed benchmark only redoes the run it was in
        if any(r["variant"] == variant and r["seed"] == seed for r in runs):
            return
        t0 = time.time()
        det = fit()
        row = {"variant": variant, "seed": seed, "auroc": auroc(det, test), "fit_s": time.time() - t0,
               "init": args.init, "epochs": args.epochs, "threads": torch.get_num_threads()}
        runs.append(row)
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(row, flush=True)

    record("as shipped", None, lambda: base)
    for seed in args.seeds:
        variants = {
            "fine-tuned": lambda: load_detector(args.init, device="cpu").set_params(
                warm_start=True, epochs=args.epochs, seed=seed),
            "from scratch": lambda: type(base)(**{**base.learned_params(), "epochs": args.epochs, "seed": seed,
                                                 "device": "cpu"}),
            "patchcore on its encoder": lambda: PatchCoreDetector(
                backbone=args.init, image_size=base.image_size, width=base.width, depth=base.depth, seed=seed,
                device="cpu"),
        }
        for name, make in variants.items():
            record(name, seed, lambda: make().fit(train))
    runs = [r for r in runs if r["seed"] is None or r["seed"] in args.seeds]
    n_train = len(train) - round(len(train) * base.val_fraction)
    lines = ["# Fine-tuning on a site's normals (tb protocol)", "",
             f"Starting model `{args.init}`; {len(train)} tb training normals (about {n_train} trained on, the "
             f"rest held out for the threshold), test {int((test.labels == 0).sum())} normal + "
             f"{int((test.labels == 1).sum())} TB films. Fine-tuning and training from scratch both run "
             f"{args.epochs} epochs ({args.epochs * n_train:,} samples). Image AUROC, mean ± sd over seeds "
             f"{args.seeds}. Machine: CPU ({platform.machine()}); each run's torch threads are in finetune.jsonl.", "",
             f"Command: `python benchmarks/finetune.py --init {args.init} --epochs {args.epochs} --seeds "
             f"{' '.join(map(str, args.seeds))}`", "",
             "| variant | AUROC | per seed | fit time (s) |", "|---|---|---|---|"]
    for name in dict.fromkeys(r["variant"] for r in runs):
        v = np.array([r["auroc"] for r in runs if r["variant"] == name])
        t = np.mean([r["fit_s"] for r in runs if r["variant"] == name])
        sd = f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else ""
        lines.append(f"| {name} | {v.mean():.3f}{sd} | {', '.join(f'{x:.3f}' for x in v)} | {t:.0f} |")
    (out / "finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
