"""The shipped-model protocol: fit a detector once on a shipped models' training pool (``--pool``: the mix of
kermany224 train normals + nih train normals, or the adult-first pools of cxrad.data.protocols; no TB image) and
score every protocol's test split, all disjoint from the pools, with AP-only and PA-only AUROCs where a test split
has views. This is how the default model is evaluated, so any candidate measured here compares with it directly.
``--bundle PATH`` scores an existing bundle (a shipped name, or a folder made by `cxrad train`) instead of
fitting; ``--save DIR`` keeps each fitted model as a bundle. ``--fuse BUNDLE...`` scores the late fusion of the
model with those bundles, as the ``fusion`` detector combines its members: each score standardised by the median
and IQR of its own model's held-out normal scores, then averaged.

    python benchmarks/mix_protocols.py --detector regional --param image_size=128 --tag regional128 --seeds 0 \
        --save 'runs/fusion/regional128-{seed}'
    python benchmarks/mix_protocols.py --bundle dae-cxr-64-300k --fuse runs/fusion/regional128-0 \
        --tag 'fusion: dae-cxr-64-300k + regional128' --seeds 0

    python benchmarks/mix_protocols.py --detector patchcore --tag patchcore-dae64 --seeds 0 1 2 \\
        --param 'backbone=runs/learning_curves/dae64/seed{seed}/bundle'

``--component NAME`` ranks by one output of the model instead of its score, e.g. the AnatPaste-style segmenter's
segmentation (``top_map``) or feature Gaussian (``feature_distance``) alone:

    python benchmarks/mix_protocols.py --bundle 'runs/pools/anatpaste128-adult-weighted/seed{seed}/bundle' \
        --component top_map --tag 'anatpaste128-adult-weighted: segmentation only'

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
from cxrad.detectors.thresholds import robust_scale
from cxrad.evaluation.metrics import evaluate
from cxrad.detectors import detector_class, load_detector
from cxrad.data.protocols import PROTOCOLS, load_protocol, training_pool, views
from common import mean_sd, read_rows  # benchmarks/common.py

HERE = Path(__file__).resolve().parent


def write_table(out: Path) -> str:
    rows = read_rows(out / "mix_protocols.jsonl")
    lines = ["# Trained once on a shipped models' pool, scored on every protocol's test split", "",
             "Image AUROC, mean ± sd over seeds (n in brackets). Fit on a shipped models' pool (the mix of "
             "kermany224 train normals + nih train normals, or an adult-first pool; no TB image), or a bundle scored "
             "as it is; every test split is disjoint from the pools. nih14 AP / PA: its AP-only and PA-only films. "
             "A dash: not measured (rows made before the protocol existed). "
             "Commands below.", "",
             "| tag | " + " | ".join(PROTOCOLS) + " | nih14 AP | nih14 PA | mean | fit (s) |",
             "|---|" + "---|" * (len(PROTOCOLS) + 4)]
    for tag in dict.fromkeys(r["tag"] for r in rows):
        mine = [r for r in rows if r["tag"] == tag]
        cells = [mean_sd([r.get(p) for r in mine]) for p in (*PROTOCOLS, "nih14_AP", "nih14_PA")]
        complete = [r for r in mine if all(r.get(p) is not None for p in PROTOCOLS)]
        mean = f"{np.mean([np.mean([r[p] for p in PROTOCOLS]) for r in complete]):.3f}" if complete else "—"
        lines.append(f"| {tag} | " + " | ".join(cells) + f" | {mean} | {np.mean([r['fit_s'] for r in mine]):.0f} |")
    lines += ["", "Commands:", ""] + [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in rows)]
    text = "\n".join(lines) + "\n"
    (out / "mix_protocols.md").write_text(text)
    return text


def fused_scores(members, frame, cache_dir, component="score"):
    """The scores of the test ``frame`` (and its ImageSet) by one model (its ``component``: the score or one of
    its parts), or by the mean of several models' scores each standardised on its own held-out normals (as the
    ``fusion`` detector does)."""
    total, test, paths = 0.0, None, None
    for m in members:
        test = load_images(frame, m.prep, cache_dir=cache_dir)
        assert paths is None or list(test.frame["path"]) == paths, "members read different images"
        paths = list(test.frame["path"])
        score = m.score_arrays(np.asarray(test.images))[component]
        if len(members) == 1:
            return score, test
        median, scale = robust_scale(m.normal_scores_)
        total = total + (score - median) / scale
    return total / len(members), test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", default=None, help="the detector kind to fit (or give --bundle)")
    ap.add_argument("--bundle", default=None, help="score this bundle instead of fitting ({seed} is replaced)")
    ap.add_argument("--save", default=None, help="keep each fitted model as a bundle here ({seed} is replaced)")
    ap.add_argument("--fuse", nargs="+", default=[], metavar="BUNDLE", help="score the fusion of the model with "
                    "these bundles ({seed} is replaced)")
    ap.add_argument("--component", default="score", help="rank by this output of the model instead of its score "
                    "(e.g. the opacity segmenter's top_map or feature_distance); not with --fuse")
    ap.add_argument("--pool", default="mix", help="training pool: mix, adult or adult-weighted")
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
    if (args.detector is None) == (args.bundle is None):
        ap.error("give --detector KIND (to fit) or --bundle PATH (to score), not both")
    if args.component != "score" and args.fuse:
        ap.error("--component scores one model's output: not with --fuse")
    pool = training_pool(args.pool)
    for seed in args.seeds:
        if (args.tag, seed) in done:
            continue
        params = {k.replace("-", "_"): yaml.safe_load(v.replace("{seed}", str(seed)))
                  for k, v in (p.split("=", 1) for p in args.param)}
        t0 = time.time()
        if args.bundle:
            det = load_detector(args.bundle.replace("{seed}", str(seed)), device=args.device)
        else:
            det = detector_class(args.detector)(**params, seed=seed, device=args.device)
            det.fit(load_images(pool, det.prep, cache_dir=args.cache_dir))
            if args.save:
                det.save(args.save.replace("{seed}", str(seed)))
        if args.component not in ("score", *det.components):
            ap.error(f"the {det.kind} model has no output {args.component!r} (it has {', '.join(det.components)})")
        members = [det] + [load_detector(b.replace("{seed}", str(seed)), device=args.device) for b in args.fuse]
        row = {"tag": args.tag, "detector": det.kind, "seed": seed, "params": params, "fit_s": time.time() - t0,
               "pool": None if args.bundle else args.pool, "bundle": args.bundle, "fuse": args.fuse,
               "machine": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
               "command": "python benchmarks/mix_protocols.py " + " ".join(
                   ([f"--bundle {args.bundle}"] if args.bundle else [f"--detector {args.detector}",
                                                                      f"--pool {args.pool}"])
                   + [f"--tag '{args.tag}'"] + [f"--param '{p}'" for p in args.param]
                   + ([f"--component {args.component}"] if args.component != "score" else [])
                   + ([f"--fuse {' '.join(args.fuse)}"] if args.fuse else []))}
        for p in PROTOCOLS:
            scores, test = fused_scores(members, load_protocol(p).test, args.cache_dir, args.component)
            row[p] = evaluate(test.labels, scores, n_boot=0)["auroc"]
            for view, mask in views(test.frame).items():
                row[f"{p}_{view}"] = evaluate(test.labels[mask], scores[mask], n_boot=0)["auroc"]
        with log.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "command"}, flush=True)
    print(write_table(out))


if __name__ == "__main__":
    main()
