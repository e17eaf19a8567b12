"""Adapting the shipped default model to a site with the site's own unlabelled films (``cxrad adapt``).

For each protocol, the test split plays the site: its films are split by patient into halves (each class on its
own, ``cxrad.data.protocols.split_halves``). One half is the unlabelled backlog the model adapts on (labels never
used), the other is scored. Rows: the model as shipped on that half, and the adapted model's three scores
(`discrepancy`, `site_residual`, `base_residual` = as shipped, from the same pass) for each seed and trim.

    python benchmarks/adapt.py --seeds 0 1 2 --epochs 20 --run-root runs/adapt
    python benchmarks/adapt.py --table-only
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cxrad.data import load_images
from cxrad.data.protocols import PROTOCOLS, load_protocol, split_halves
from cxrad.detectors import AdaptedDetector
from cxrad.evaluation.metrics import evaluate
from common import mean_sd, read_rows, run_resumable  # benchmarks/common.py

HERE = Path(__file__).resolve().parent
SCORES = ("discrepancy", "site_residual", "base_residual")


def run(args, protocol: str, seed: int, trim: float) -> dict | None:
    backlog, held = split_halves(load_protocol(protocol).test, seed=0)
    det = AdaptedDetector(base=args.model, epochs=args.epochs, trim=trim, seed=seed, device=args.device,
                          cache_dir=args.cache_dir, max_minutes=args.max_minutes,
                          checkpoint_dir=str(Path(args.run_root) / protocol / f"trim{trim:g}" / f"seed{seed}"))
    t0 = time.time()
    det.fit(load_images(backlog.assign(label=0), det.prep, cache_dir=args.cache_dir))  # labels never used
    if not det.training_finished_:
        return None
    test = load_images(held, det.prep, cache_dir=args.cache_dir)
    scores = det.score_arrays(np.asarray(test.images))
    row = {"protocol": protocol, "seed": seed, "trim": trim, "epochs": args.epochs, "model": args.model or "default",
           "n_backlog": len(backlog), "backlog_abnormal": float(backlog["label"].mean()), "n_test": len(held),
           "fit_s": time.time() - t0, "machine": torch.cuda.get_device_name(0) if torch.cuda.is_available() else
           f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"}
    row.update({name: evaluate(test.labels, scores[name], n_boot=0)["auroc"] for name in SCORES})
    return row


def write_table(out: Path) -> str:
    rows = read_rows(out / "adapt.jsonl")
    lines = ["# Adapting the default model to a site with its unlabelled films", "",
             "Each protocol's test split plays the site: half its patients are the unlabelled backlog "
             "(`cxrad adapt --unlabelled`), the other half is scored. Image AUROC on that half, mean ± sd over "
             "seeds (n). `as shipped` is the base model's own score (the same for every seed).", "",
             "| protocol | backlog (abnormal share) | trim | as shipped | adapted: discrepancy | adapted: own residual |"
             " epochs | fit (s) |", "|---|---|---|---|---|---|---|---|"]
    for protocol in PROTOCOLS:
        for trim in sorted({r["trim"] for r in rows if r["protocol"] == protocol}):
            mine = [r for r in rows if r["protocol"] == protocol and r["trim"] == trim]
            lines.append(f"| {protocol} | {mine[0]['n_backlog']} ({100 * mine[0]['backlog_abnormal']:.0f}%) | {trim:g} | "
                         f"{mine[0]['base_residual']:.3f} | {mean_sd([r['discrepancy'] for r in mine])} | "
                         f"{mean_sd([r['site_residual'] for r in mine])} | {mine[0]['epochs']} | "
                         f"{np.mean([r['fit_s'] for r in mine]):.0f} |")
    lines += ["", f"Machine: {rows[0]['machine']}." if rows else ""]
    text = "\n".join(lines) + "\n"
    (out / "adapt.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="the DAE to adapt (default: the shipped default)")
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trims", type=float, nargs="+", default=[0.0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--run-root", default="runs/adapt")
    ap.add_argument("--cache-dir", default=".cache/cxrad")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        jobs = [(protocol, seed, trim) for seed in args.seeds for trim in args.trims for protocol in args.protocols]
        run_resumable(out / "adapt.jsonl", jobs, lambda r: (r["protocol"], r["seed"], r["trim"]),
                      lambda protocol, seed, trim: run(args, protocol, seed, trim))
    print(write_table(out))


if __name__ == "__main__":
    main()
