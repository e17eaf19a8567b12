"""DDAD against the normal-only ensemble at the same compute, on the protocols that have an unlabelled pool.

For each protocol (``cxrad.data.protocols.pooled_protocol``: kermany224, tb, nih14) and seed:

- ``ddad``: 3 AE-U networks on the training normals + 3 on the normals and the pool; scored by the
  inter-ensemble discrepancy (the intra and rec components of the same model are recorded too);
- ``normal-only``: 6 AE-U networks on the training normals only (the same compute), scored by the ensemble's
  weighted reconstruction error.

Each network sees ``--samples`` training samples. Nothing is tuned on test labels. Finished runs are lines of
OUT/ddad.jsonl (skipped when run again; killed runs resume from --run-root's checkpoints); OUT/ddad.md is the table.

    python benchmarks/ddad.py --samples 8000 --seeds 0 1 2 --run-root runs/ddad
    python benchmarks/ddad.py --table-only
"""
from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cxrad.data import load_images
from cxrad.data.protocols import POOLED, pooled_protocol
from cxrad.detectors import DDADDetector
from cxrad.evaluation.metrics import evaluate
from common import mean_sd, read_rows, run_resumable  # benchmarks/common.py

HERE = Path(__file__).resolve().parent
VARIANTS = {"ddad": {"normative": 3, "unknown": 3, "score_from": "inter"},
            "normal-only": {"normative": 6, "unknown": 0, "score_from": "rec"}}


def run(args, protocol: str, variant: str, seed: int) -> dict | None:
    proto = pooled_protocol(protocol)
    probe = DDADDetector()
    train = load_images(proto.train, probe.prep, cache_dir=args.cache_dir)
    epochs = math.ceil(args.samples / max(1, round(len(train) * (1 - probe.val_fraction))))
    det = DDADDetector(**VARIANTS[variant], epochs=epochs, seed=seed, device=args.device, cache_dir=args.cache_dir,
                       checkpoint_dir=str(Path(args.run_root) / protocol / variant / f"seed{seed}"),
                       max_minutes=args.max_minutes)
    pool = load_images(proto.pool, det.prep, cache_dir=args.cache_dir) if det.unknown else None
    t0 = time.time()
    det.fit(train, unlabelled=pool)
    if not det.training_finished_:
        return None
    test = load_images(proto.test, det.prep, cache_dir=args.cache_dir)
    scores = det.score_arrays(np.asarray(test.images))
    row = {"protocol": protocol, "variant": variant, "seed": seed, "samples_per_network": args.samples,
           "epochs": epochs, "fit_s": time.time() - t0, "n_pool": 0 if pool is None else len(pool),
           "pool_abnormal": None if pool is None else float(proto.pool["label"].mean()),
           "machine": torch.cuda.get_device_name(0) if torch.cuda.is_available() else
           f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"}
    for name in ("score", *det.components):
        row[name] = evaluate(test.labels, scores[name], n_boot=0)["auroc"]
    return row


def write_table(out: Path) -> str:
    rows = read_rows(out / "ddad.jsonl")
    lines = ["# DDAD and the normal-only ensemble at the same compute", "",
             "Image AUROC on each protocol's test split, mean ± sd over seeds (n in brackets). `ddad`: 3 AE-U "
             "networks on the training normals + 3 on the normals and the unlabelled pool, scored by their "
             "discrepancy (`inter`); `normal-only`: 6 AE-U networks on the normals, scored by their weighted "
             "reconstruction error (`rec`). Every network sees the same number of samples. Pools: "
             "`cxrad.data.protocols.pooled_protocol` (no test patient in any pool).", "",
             "| protocol | pool (abnormal share) | variant | score | inter | intra | rec | samples/network | machine |",
             "|---|---|---|---|---|---|---|---|---|"]
    for protocol in POOLED:
        for variant in VARIANTS:
            mine = [r for r in rows if r["protocol"] == protocol and r["variant"] == variant]
            if not mine:
                continue
            pool = f"{mine[0]['n_pool']} ({100 * mine[0]['pool_abnormal']:.0f}%)" if mine[0]["n_pool"] else "none"
            lines.append(f"| {protocol} | {pool} | {variant} | " + " | ".join(
                mean_sd([r[k] for r in mine]) for k in ("score", "inter", "intra", "rec")) +
                f" | {mine[0]['samples_per_network']:,} | {mine[0]['machine']} |")
    text = "\n".join(lines) + "\n"
    (out / "ddad.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocols", nargs="+", default=list(POOLED), choices=POOLED)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=8000, help="training samples per network")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--run-root", default="runs/ddad")
    ap.add_argument("--cache-dir", default=".cache/cxrad")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        jobs = [(protocol, variant, seed) for seed in args.seeds for protocol in args.protocols
                for variant in args.variants]
        run_resumable(out / "ddad.jsonl", jobs, lambda r: (r["protocol"], r["variant"], r["seed"]),
                      lambda protocol, variant, seed: run(args, protocol, variant, seed))
    print(write_table(out))


if __name__ == "__main__":
    main()
