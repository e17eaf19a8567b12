"""How many training samples a default model gets, chosen on validation labels, never on a test split's.

The validation set is adult NIH films of both classes that no protocol tests on and no candidate trained on:
the NIH training patients' films (``pooled_protocol("nih14").pool``: nih_cxr14_talo and nih_cxr14_64), less the
nih protocol's test patients and less every image of the training pool (by content hash). Each run's weight
snapshots and each given bundle are scored on it; the table is image AUROC (and on AP and PA films alone).

    python benchmarks/budget_validation.py --run runs/pools/dae64-mix/seed0 --bundle dae-cxr-64-300k \\
        --pool runs/pools/mix.csv --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrad.data import load_images
from cxrad.data.protocols import load_protocol, pooled_protocol, views
from cxrad.detectors import load_detector
from cxrad.detectors.base import Detector
from cxrad.evaluation.metrics import evaluate
from cxrad.training.checkpoints import read_state


def validation_frame(pool_csv: Path, trained_prefixes: set[str]) -> pd.DataFrame:
    """The validation films: also none whose hash starts with a prefix of a bundle's training fingerprint."""
    frame = pooled_protocol("nih14").pool  # deduplicated: it has its sha256 column
    nih_test = set(load_protocol("nih").test["patient_id"].astype(str))
    frame = frame[~frame["patient_id"].astype(str).isin(nih_test)]
    trained = set(pd.read_csv(pool_csv)["sha256"])
    seen = frame["sha256"].isin(trained) | frame["sha256"].map(
        lambda h: any(h.startswith(p) for p in trained_prefixes))
    return frame[~seen].reset_index(drop=True)


def training_prefixes(bundle) -> set[str]:
    from cxrad.bundles import read_meta, resolve
    return set((read_meta(resolve(bundle)).get("training_data") or {}).get("image_sha256_prefixes") or [])


def aurocs(labels, scores, frame) -> dict:
    row = {"val": evaluate(labels, scores, n_boot=0)["auroc"]}
    for view, mask in views(frame).items():
        row[f"val_{view}"] = evaluate(labels[mask], scores[mask], n_boot=0)["auroc"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", default=[], help="a run folder (bundle/ and checkpoint/snapshots/)")
    ap.add_argument("--bundle", action="append", default=[], help="a bundle folder or shipped model name")
    ap.add_argument("--pool", type=Path, required=True, help="the training pool CSV (with sha256) to exclude")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    prefixes = set().union(*[training_prefixes(b) for b in [*args.bundle, *(Path(r) / "bundle" for r in args.run)]])
    frame = validation_frame(args.pool, prefixes)
    print(f"validation: {len(frame)} films, {int(frame['label'].sum())} abnormal", flush=True)
    rows = []
    for run in map(Path, args.run):
        det = load_detector(run / "bundle", "cpu")
        if any(getattr(type(det), hook) is not getattr(Detector, hook)
               for hook in ("fit_after_training", "calibrate_outputs")):
            # its score also depends on what fit learnt after training: learning_curves.py refits that per snapshot
            raise SystemExit(f"{run}: the {det.kind} detector's snapshots need their post-training fit; "
                             "score them with learning_curves.py")
        images = load_images(frame, det.prep, cache_dir=args.cache_dir)
        for snap in sorted((run / "checkpoint" / "snapshots").glob("samples-*.safetensors")):
            tensors, meta = read_state(snap)
            det.model_.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
            scores = det.score_arrays(np.asarray(images.images))["score"]
            rows.append({"model": str(run), "samples": meta["samples"], **aurocs(images.labels, scores, images.frame)})
            print(rows[-1], flush=True)
    for name in args.bundle:
        det = load_detector(name, "cpu")
        images = load_images(frame, det.prep, cache_dir=args.cache_dir)
        scores = det.score_arrays(np.asarray(images.images))["score"]
        rows.append({"model": name, "samples": (det.state().get("samples_seen") or None),
                     **aurocs(images.labels, scores, images.frame)})
        print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "budget_validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = ["# Training budget on validation labels", "",
             f"Validation: {len(frame)} adult NIH films of training-side patients ({int(frame['label'].sum())} "
             "abnormal, any of the 14 findings), none in a test split or in the training pool. Image AUROC.", "",
             "| model | samples | val | val AP | val PA |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['samples'] or 'n/a'} | {r['val']:.3f} | {r.get('val_AP', float('nan')):.3f} "
                     f"| {r.get('val_PA', float('nan')):.3f} |")
    (args.out / "budget_validation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
