"""``cxrad demo``: the main job on bundled defaults, in about a minute on two CPU cores."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from cxrad.frontends.cli.common import EXIT_OK


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("demo", help="train, score and evaluate on the bundled sample images",
                       description="The main job on bundled defaults: train the seed CAE on bundled normal CC BY "
                       "images, score bundled normal and abnormal images with it and with the shipped default "
                       "model, print the metrics, and write everything under --out.")
    p.set_defaults(_subparser=p, func=run)
    p.add_argument("--out", default="runs/demo", help="folder for the models, scores and metrics (runs/demo)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N]")
    p.add_argument("--epochs", type=int, default=25, help="epochs of the seed CAE on the bundled images (25)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--cache-dir", default=None, help="preprocessing cache (default: $CXRAD_CACHE, or OUT/cache)")


def run(args) -> int:
    from cxrad.data import bundled_samples, deduplicate, load_images
    from cxrad.evaluation import evaluate_model, format_metrics
    from cxrad.detectors import CAEDetector
    from cxrad.bundles import default_name
    from cxrad.detectors import load_detector

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df, _ = deduplicate(bundled_samples())
    train_df = df[(df["orig_split"] == "train") & (df["label"] == 0)]
    test_df = df[df["orig_split"] == "test"]
    cache = Path(args.cache_dir or os.environ.get("CXRAD_CACHE") or out / "cache")

    print(f"[1/3] training the seed CAE ({args.epochs} epochs) on {len(train_df)} bundled normal images", flush=True)
    det = CAEDetector(epochs=args.epochs, device=args.device, progress=not args.quiet, cache_dir=str(cache))
    det.fit(load_images(train_df, det.prep, cache_dir=cache))
    det.save(out / "cae")

    print(f"[2/3] scoring {len(test_df)} bundled test images (normal, pneumonia, COVID-19)", flush=True)
    result = evaluate_model(det, test_df, out / "cae_eval", cache_dir=cache)
    print("\n== seed CAE (trained just now on the bundled sample; tiny data, expect a weak model) ==")
    print(format_metrics(result))

    name = default_name()
    if name:
        print(f"\n[3/3] scoring the same images with the shipped default model '{name}'", flush=True)
        result = evaluate_model(load_detector(None, args.device), test_df, out / "default_eval", cache_dir=cache)
        print(f"\n== shipped default model: {name} ==")
        print(format_metrics(result))
    else:
        print("\n[3/3] this build ships no default model; skipped", file=sys.stderr)
    print(f"\noutputs under {out}/ (model bundle, scores.csv, metrics.json, breakdown tables)")
    return EXIT_OK
