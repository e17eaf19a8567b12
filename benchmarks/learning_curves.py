"""Learning curves: image AUROC on the four protocols as a detector trains, from weight snapshots.

Each seed trains once on a shipped models' training pool (``--pool``: ``mix`` is kermany224 train normals + nih
train normals, the `covid` protocol's training set; ``adult`` and ``adult-weighted`` are in cxrad.protocols; no TB
image), keeping its weights every ``--snapshot-every`` samples. Every snapshot is then scored on the protocols'
test splits, all disjoint from the pools, and on the AP-only and PA-only films where a test split has views. Nothing is selected
on test labels: the reported model of a run is its last snapshot (a rule fixed in advance), and the snapshot
of lowest normal-only validation loss is marked for comparison.

    python benchmarks/learning_curves.py --detector dae --image-size 64 --samples 300000 --seeds 0 1 2 \\
        --snapshot-every 20000 --tag dae64 --run-root runs/lc
    python benchmarks/learning_curves.py --table-only

Runs resume from their checkpoints when killed (``--max-minutes`` stops one cleanly); finished snapshot
evaluations are kept in OUT/learning_curves.jsonl and skipped when the command is run again.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from cxrad.data import hold_out_normals, load_images
from cxrad.evaluation.metrics import evaluate
from cxrad.detectors import detector_class
from cxrad.data.protocols import PROTOCOLS, load_protocol, training_pool, views
from common import mean_sd, read_rows  # benchmarks/common.py

HERE = Path(__file__).resolve().parent


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def done_keys(out: Path) -> set:
    return {(r["tag"], r["seed"], r["samples"]) for r in read_rows(out / "learning_curves.jsonl")}


def train_seed(args, params: dict, seed: int, cache: str):
    mix = training_pool(args.pool)
    cls = detector_class(args.detector)
    run_dir = Path(args.run_root) / args.tag / f"seed{seed}"
    probe = cls(**params)
    images = load_images(mix, probe.prep, cache_dir=cache)
    n_train = round(len(images) * (1 - probe.val_fraction))
    epochs = math.ceil(args.samples / max(n_train, 1))
    det = cls(**{**params, "seed": seed, "epochs": epochs, "checkpoint_dir": str(run_dir / "checkpoint"),
                 "snapshot_every": args.snapshot_every, "progress": not args.quiet, "cache_dir": cache,
                 "max_minutes": args.max_minutes, "device": args.device})
    t0 = time.time()
    det.fit(images)
    print(f"seed {seed}: {det.epochs_done_}/{epochs} epochs in {time.time() - t0:.0f} s "
          f"({'finished' if det.training_finished_ else 'stopped by --max-minutes; run again to continue'})",
          flush=True)
    if det.training_finished_:
        det.save(run_dir / "bundle")
    return det, run_dir, images


def evaluate_snapshots(args, det, run_dir: Path, seed: int, cache: str, out: Path, pool) -> None:
    """Score every snapshot of a run; each is given its own post-training fit (feature Gaussian, calibration,
    normal scores) from the same training and held-out normals as ``fit`` used."""
    train, val = hold_out_normals(pool.subset(pool.labels == 0), det.val_fraction, det.seed)
    tests = {p: load_images(load_protocol(p).test, det.prep, cache_dir=cache) for p in PROTOCOLS}
    seen = done_keys(out)
    for snap in sorted((run_dir / "checkpoint" / "snapshots").glob("samples-*.safetensors")):
        if (args.tag, seed, int(snap.stem.split("-")[1])) in seen:  # the name holds its sample count
            continue
        meta = det.use_snapshot(snap, np.asarray(train.images), np.asarray(val.images))
        row = {"tag": args.tag, "detector": args.detector, "seed": seed, "samples": meta["samples"],
               "epoch": meta["epoch"] + 1, "val_loss": (meta["history"].get("val_loss") or [None])[-1],
               "machine": machine(), "pool": args.pool,
               "params": {k: v for k, v in json.loads(args.params_json).items()}}
        for p, test in tests.items():
            scores = det.score_arrays(np.asarray(test.images))["score"]
            row[p] = evaluate(test.labels, scores, n_boot=0)["auroc"]
            for view, mask in views(test.frame).items():
                row[f"{p}_{view}"] = evaluate(test.labels[mask], scores[mask], n_boot=0)["auroc"]
        with open(out / "learning_curves.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                       if k not in ("params", "machine")), flush=True)


VIEWS = ("nih14_AP", "nih14_PA")


def _mean(row) -> float:
    """The mean over the protocols; NaN when one is missing (rows of runs made before a protocol existed)."""
    return float(np.mean([row.get(p, np.nan) for p in PROTOCOLS]))


def write_outputs(out: Path) -> str:
    rows = read_rows(out / "learning_curves.jsonl")
    tags = list(dict.fromkeys(r["tag"] for r in rows))
    for r in rows:  # snapshots are grouped across seeds by their place in the run (sample counts differ a little)
        r["rank"] = sorted(x["samples"] for x in rows if x["tag"] == r["tag"] and x["seed"] == r["seed"]).index(
            r["samples"])
    lines = ["# Learning curves (image AUROC on each protocol's test split, by training samples seen)", "",
             "Each run trains on a shipped models' pool (`pool`: `mix` = kermany224 train normals + nih train "
             "normals; `adult`, `adult-weighted` in cxrad.data.protocols; no TB image); each snapshot is scored on "
             "every protocol's test split. Mean ± sd over seeds; the *reported* model of a run is its last snapshot "
             "(fixed in advance), never one picked on test labels. `min val` marks the snapshot of lowest mean "
             "normal-only validation loss. nih14 AP and PA: the AUROC on the AP-only and PA-only films of its test "
             "split. A dash: not measured (runs made before the protocol existed).", "",
             "## The reported model of each run (its last snapshot)", "",
             "| tag | pool | seeds | samples | " + " | ".join(PROTOCOLS) + " | nih14 AP | nih14 PA | mean |",
             "|---|---|---|---|" + "---|" * (len(PROTOCOLS) + 3)]
    for tag in tags:
        mine = [r for r in rows if r["tag"] == tag]
        last = [max((r for r in mine if r["seed"] == seed), key=lambda r: r["samples"])
                for seed in sorted({r["seed"] for r in mine})]
        lines.append(f"| {tag} | {last[0].get('pool', 'mix')} | {len(last)} | {np.mean([r['samples'] for r in last]):,.0f} | "
                     + " | ".join(mean_sd([r.get(p) for r in last], count=False) for p in (*PROTOCOLS, *VIEWS))
                     + f" | {mean_sd([_mean(r) for r in last], count=False)} |")
    lines.append("")
    for tag in tags:
        mine = [r for r in rows if r["tag"] == tag]
        seeds = sorted({r["seed"] for r in mine})
        lines += [f"## {tag}", "", f"detector `{mine[0]['detector']}`, pool `{mine[0].get('pool', 'mix')}`, settings "
                  f"`{mine[0]['params']}`, seeds {seeds}, machine {mine[0]['machine']}", "",
                  "| samples | n seeds | val loss | " + " | ".join(PROTOCOLS) + " | mean |",
                  "|---|---|---|" + "---|" * len(PROTOCOLS) + "---|"]
        ranks = sorted({r["rank"] for r in mine})
        val_means = {k: np.mean([r["val_loss"] for r in mine if r["rank"] == k]) for k in ranks}
        best = min(val_means, key=val_means.get)
        for k in ranks:
            at = [r for r in mine if r["rank"] == k]
            mark = " (min val)" if k == best else ""
            lines.append(f"| {np.mean([r['samples'] for r in at]):,.0f}{mark} | {len(at)} | {val_means[k]:.5f} | "
                         + " | ".join(mean_sd([r.get(p) for r in at], count=False) for p in PROTOCOLS)
                         + f" | {mean_sd([_mean(r) for r in at], count=False)} |")
        lines.append("")
    text = "\n".join(lines)
    (out / "learning_curves.md").write_text(text)
    _plot(rows, tags, out / "learning_curves.png")
    return text


def _plot(rows, tags, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(4 * len(PROTOCOLS), 3.4), sharey=True)
    for tag in tags:
        mine = [r for r in rows if r["tag"] == tag]
        ranks = sorted({r["rank"] for r in mine})
        xs = [np.mean([r["samples"] for r in mine if r["rank"] == k]) for k in ranks]
        for ax, p in zip(axes, PROTOCOLS):
            vals = [np.array([r.get(p, np.nan) for r in mine if r["rank"] == k]) for k in ranks]
            mean, sd = np.array([v.mean() for v in vals]), np.array([v.std() for v in vals])
            ax.plot(xs, mean, marker="o", ms=3, label=tag)
            ax.fill_between(xs, mean - sd, mean + sd, alpha=0.2)
    for ax, p in zip(axes, PROTOCOLS):
        ax.set_title(p)
        ax.set_xscale("log")
        ax.set_xlabel("training samples")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("image AUROC")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", default="dae")
    ap.add_argument("--tag", default="dae64")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--pool", default="mix", help="training pool: mix, adult or adult-weighted")
    ap.add_argument("--train-only", action="store_true", help="train (and snapshot); score the snapshots later")
    ap.add_argument("--samples", type=int, default=300_000, help="training samples per seed")
    ap.add_argument("--snapshot-every", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--run-root", default="runs/learning_curves")
    ap.add_argument("--cache-dir", default=".cache/cxrad")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        print(write_outputs(out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    params = {k.replace("-", "_"): yaml.safe_load(v) for k, v in (p.split("=", 1) for p in args.param)}
    if args.image_size:
        params["image_size"] = args.image_size
    args.params_json = json.dumps(params)
    for seed in args.seeds:
        det, run_dir, pool = train_seed(args, params, seed, args.cache_dir)
        if not args.train_only:
            evaluate_snapshots(args, det, run_dir, seed, args.cache_dir, out, pool)
        if not det.training_finished_:
            sys.exit(75)  # stopped by the time box: resumable, nothing more to do now
    if not args.train_only:
        print(write_outputs(out))


if __name__ == "__main__":
    main()
