"""The shipped-model protocol: fit a detector once on the shipped models' training mix (kermany224 train normals +
nih train normals; no TB image) and score the four protocols' test splits, all disjoint from the mix. This is
how the default model is evaluated, so any candidate measured here compares with it directly.

    python benchmarks/mix_protocols.py --detector patchcore --tag patchcore-dae64 --seeds 0 1 2 \\
        --param 'backbone=runs/learning_curves/dae64/seed{seed}/bundle'

``{seed}`` in a --param value is replaced by the seed (e.g. one DAE backbone per seed). Each finished run is a
line of OUT/mix_protocols.jsonl (skipped when run again); OUT/mix_protocols.md is the table.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from cxrad.data import load_images
from cxrad.evaluation.metrics import evaluate
from cxrad.detectors import detector_class
from cxrad.data.protocols import PROTOCOLS, load_protocol

HERE = Path(__file__).resolve().parent


def write_table(out: Path) -> str:
    rows = [json.loads(line) for line in (out / "mix_protocols.jsonl").read_text().splitlines() if line.strip()]
    lines = ["# Trained once on the shipped models' mix, scored on the four test splits", "",
             "Image AUROC, mean ± sd over seeds (n in brackets). Fit on kermany224 train normals + nih train normals "
             "(no TB image); every test split is disjoint from them. Commands in each row's `command`.", "",
             "| tag | " + " | ".join(PROTOCOLS) + " | mean | fit (s) |", "|---|" + "---|" * (len(PROTOCOLS) + 2)]
    for tag in dict.fromkeys(r["tag"] for r in rows):
        mine = [r for r in rows if r["tag"] == tag]
        cells = []
        for p in PROTOCOLS:
            v = np.array([r[p] for r in mine])
            cells.append(f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "") + f" ({len(v)})")
        mean = np.mean([np.mean([r[p] for p in PROTOCOLS]) for r in mine])
        lines.append(f"| {tag} | " + " | ".join(cells) + f" | {mean:.3f} | {np.mean([r['fit_s'] for r in mine]):.0f} |")
    lines += ["", "Commands:", ""] + [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in rows)]
    text = "\n".join(lines) + "\n"
    (out / "mix_protocols.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", default=".cache/cxrad")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    log = out / "mix_protocols.jsonl"
    done = {(r["tag"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())} if log.exists() else set()
    mix = load_protocol("covid").train
    for seed in args.seeds:
        if (args.tag, seed) in done:
            continue
        params = {k.replace("-", "_"): yaml.safe_load(v.replace("{seed}", str(seed)))
                  for k, v in (p.split("=", 1) for p in args.param)}
        det = detector_class(args.detector)(**params, seed=seed, device=args.device)
        t0 = time.time()
        det.fit(load_images(mix, det.prep, cache_dir=args.cache_dir))
        row = {"tag": args.tag, "detector": args.detector, "seed": seed, "params": params, "fit_s": time.time() - t0,
               "machine": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
               "command": "python benchmarks/mix_protocols.py " + " ".join(
                   [f"--detector {args.detector}", f"--tag {args.tag}"] + [f"--param '{p}'" for p in args.param])}
        for p in PROTOCOLS:
            test = load_images(load_protocol(p).test, det.prep, cache_dir=args.cache_dir)
            row[p] = evaluate(test.labels, det.decision_function(test), n_boot=0)["auroc"]
        with log.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "command"}, flush=True)
    print(write_table(out))


if __name__ == "__main__":
    main()
