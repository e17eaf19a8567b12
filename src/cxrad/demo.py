"""``cxrad demo``: the main job on bundled defaults, in about a minute on two CPU cores."""
from __future__ import annotations

import sys
from pathlib import Path

SAMPLES = Path(__file__).parent / "samples"


def sample_manifest():
    from .data import from_csv
    return from_csv(SAMPLES / "labels.csv", root=SAMPLES)


def run_demo(out: Path, device: str = "auto", epochs: int = 25, quiet: bool = False) -> int:
    from .cli import evaluate_model, format_metrics
    from .data import deduplicate, load_images
    from .models.cae import CAEDetector
    from .pretrained import available, default_name, resolve

    out.mkdir(parents=True, exist_ok=True)
    df, _ = deduplicate(sample_manifest())
    train_df = df[(df["orig_split"] == "train") & (df["label"] == 0)]
    test_df = df[df["orig_split"] == "test"]
    cache = out / "cache"

    print(f"[1/3] training the seed CAE ({epochs} epochs) on {len(train_df)} bundled normal images", flush=True)
    det = CAEDetector(epochs=epochs, device=device, progress=not quiet, checkpoint_dir=str(out / "cae" / "checkpoint"),
                      cache_dir=str(cache))
    det.fit(load_images(train_df, det.prep, cache_dir=cache))
    det.save(out / "cae")

    print(f"[2/3] scoring {len(test_df)} bundled test images (normal, pneumonia, COVID-19)", flush=True)
    result = evaluate_model(det, test_df, out / "cae_eval", cache_dir=cache)
    print("\n== seed CAE (trained just now on the bundled sample; tiny data, expect a weak model) ==")
    print(format_metrics(result))

    if default_name() and default_name() in available():
        from .bundle import load_detector
        name = default_name()
        print(f"\n[3/3] scoring the same images with the shipped default model '{name}'", flush=True)
        default = load_detector(resolve(None))
        result = evaluate_model(default, test_df, out / "default_eval", cache_dir=cache)
        print(f"\n== shipped default model: {name} ==")
        print(format_metrics(result))
    else:
        print("\n[3/3] this build ships no default model; skipped", file=sys.stderr)
    print(f"\noutputs under {out}/ (model bundle, scores.csv, metrics.json, breakdown tables)")
    return 0
