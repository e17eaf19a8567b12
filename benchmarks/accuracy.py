"""Accuracy benchmark: train each detector on each protocol's normal images, over several model seeds, and
write a markdown table of image-level AUROC (mean +- sd over seeds, and the pooled bootstrap CI).

    python benchmarks/accuracy.py --detector cae --seeds 0 1 2 --epochs 15 --out benchmarks/results

Every finished (detector, tag, protocol, seed) run is appended to OUT/runs.jsonl and skipped when the command
is run again, so a killed benchmark resumes where it stopped (mid-training too, with ``--checkpoint-root``).
``--table-only`` rebuilds OUT/accuracy.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cxrad.frontends.cli.common import parse_value as _parse_value
from cxrad.data import load_images
from cxrad.detectors import detector_class
from cxrad.evaluation import evaluate_model
from cxrad.data.protocols import PROTOCOLS, load_protocol

PAPER = "CAE paper (COVID-19, its own data): AUROC 0.672, recall 0.66"


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} threads)"


def run_one(kind: str, params: dict, protocol, seed: int, cache_dir: str, device: str,
            checkpoint_dir: str | None = None) -> dict:
    cls = detector_class(kind)
    runtime = {"checkpoint_dir": checkpoint_dir} if "checkpoint_dir" in {s["name"] for s in cls.settings()} else {}
    det = cls(seed=seed, device=device, cache_dir=cache_dir, **runtime, **params)
    t0 = time.time()
    det.fit(load_images(protocol.train, det.prep, cache_dir=cache_dir))
    fit_s = time.time() - t0
    test = load_images(protocol.test, det.prep, cache_dir=cache_dir)
    t1 = time.time()
    m = evaluate_model(det, test)  # unreadable rows are counted, never scored
    score_s = time.time() - t1
    table = m["scores"][m["scores"]["error"] == ""]
    return {"auroc": m["auroc"], "auroc_ci": m["auroc_ci"], "auprc": m["auprc"], "sensitivity": m["sensitivity"],
            "specificity": m["specificity"], "components": m["components"], "fit_s": fit_s,
            "score_s_per_image": score_s / max(len(test), 1), "n_train": len(protocol.train),
            "n_test": len(test), "labels": table["label"].tolist(), "scores": table["score"].tolist()}


def fmt_cell(rows: list[dict]) -> str:
    aucs = np.array([r["auroc"] for r in rows])
    sd = f" ± {aucs.std(ddof=1):.3f}" if len(aucs) > 1 else ""
    return f"{aucs.mean():.3f}{sd} (n={len(aucs)})"


def write_table(out: Path) -> str:
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line.strip()]
    names = sorted({r["name"] for r in runs}, key=lambda n: [r["name"] for r in runs].index(n))
    lines = ["# Accuracy benchmark (image-level AUROC, trained on normal images only)", "",
             "Mean ± sd over model seeds (fixed patient-level data split); below each, the 95% bootstrap CI of "
             "the seed-0 run, and the mean recall (sensitivity) at the stored threshold (95% specificity on held-out "
             "normal validation images, no abnormal labels used). Protocols: see `cxrad.protocols`.", "",
             "| detector | settings | " + " | ".join(PROTOCOLS) + " | machine |",
             "|---|---|" + "---|" * len(PROTOCOLS) + "---|"]
    for name in names:
        mine = [r for r in runs if r["name"] == name]
        cells = []
        for p in PROTOCOLS:
            rows = [r for r in mine if r["protocol"] == p]
            if not rows:
                cells.append("—")
                continue
            first = min(rows, key=lambda r: r["seed"])
            lo, hi = first["auroc_ci"]
            recall = np.mean([r["sensitivity"] for r in rows])
            cells.append(f"{fmt_cell(rows)}<br>CI {lo:.3f}–{hi:.3f}<br>recall {recall:.2f}")
        settings = ", ".join([mine[0]["detector"]] + [f"{k}={v}" for k, v in mine[0]["params"].items()])
        lines.append(f"| {name} | {settings} | " + " | ".join(cells) + f" | {mine[0]['machine']} |")
    lines += ["", f"Reference: {PAPER}. Reference numbers on these sets at 128 px (the project's reference measurements): seed CAE "
              "≈0.51–0.52 (kermany224), 0.60–0.62 (TB); supervised CNN ceiling 0.98 / 0.84.", ""]
    comp_lines = ["## Score components (mean AUROC over seeds)", "", "| detector | protocol | components |",
                  "|---|---|---|"]
    for name in names:
        for p in PROTOCOLS:
            rows = [r for r in runs if r["name"] == name and r["protocol"] == p]
            if rows and rows[0]["components"]:
                comps = {c: np.mean([r["components"][c] for r in rows]) for c in rows[0]["components"]}
                comp_lines.append(f"| {name} | {p} | " + ", ".join(f"{c} {v:.3f}" for c, v in comps.items()) + " |")
    text = "\n".join(lines + comp_lines) + "\n"
    (out / "accuracy.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", default="cae")
    ap.add_argument("--tag", help="name of this variant in the table (default: the detector kind)")
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--image-size", type=int, help="input size (default: the detector's own)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--data", help="shared data folder (default ../shared/data)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=".cache/cxrad")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--checkpoint-root", help="keep training checkpoints in ROOT/<protocol>/seed<N>: a killed run "
                    "resumes there, and f-AnoGAN reuses an AnoGAN's finished GAN of the same settings")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        print(write_table(out))
        return 0
    params = {"image_size": args.image_size} if args.image_size else {}
    if args.epochs is not None:
        params["epochs"] = args.epochs
    for item in args.param:
        k, _, v = item.partition("=")
        params[k.replace("-", "_")] = _parse_value(v)
    name = args.tag or args.detector
    log = out / "runs.jsonl"
    done = set()
    if log.exists():
        done = {(r["name"], r["protocol"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())}
    for protocol_name in args.protocols:
        protocol = load_protocol(protocol_name, args.data)
        print(protocol.summary(), flush=True)
        for seed in args.seeds:
            if (name, protocol_name, seed) in done:
                continue
            ckpt = str(Path(args.checkpoint_root) / protocol_name / f"seed{seed}") if args.checkpoint_root else None
            result = run_one(args.detector, params, protocol, seed, args.cache_dir, args.device, ckpt)
            row = {"name": name, "detector": args.detector, "params": params, "protocol": protocol_name,
                   "seed": seed, "machine": machine(), **result}
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"  {name} {protocol_name} seed {seed}: AUROC {result['auroc']:.3f} "
                  f"(fit {result['fit_s']:.0f}s)", flush=True)
    print(write_table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
