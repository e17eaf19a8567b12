"""The fusion candidate checked on validation labels, never on a test split's.

The adult-weighted pool holds every adult normal in the shared data, so no NIH normal is left outside it; but
each seed's DAE held out 10 % of its pool's normals (by patient) and never trained on them. Its adult ones that
the default's training fingerprint does not hold either are the validation normals of that seed; the abnormal
films are the NIH training-side films with any of the 14 findings (no pool holds an abnormal film, no protocol
tests on them). Each seed's default, adult-weighted DAE and fusion of the two (each score standardised by its
own model's held-out normal scores, averaged, as `mix_protocols.py --fuse` does) are scored on that set.
With ``--pool mix`` (a member trained on the shipped mix, as the default was), the validation set is
`budget_validation.py`'s: the NIH training-side films of both classes that neither model trained on.

    python benchmarks/fusion_validation.py --run 'runs/pools/dae64-adult-weighted/seed{seed}' --seeds 0 1 2
    python benchmarks/fusion_validation.py --pool mix --run 'runs/pools/dae64-mix/seed{seed}' --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from cxrad.data import hold_out_normals, load_images
from cxrad.data.protocols import load_protocol, pooled_protocol, training_pool
from cxrad.detectors import load_detector
from cxrad.evaluation.metrics import evaluate
from budget_validation import training_prefixes, validation_frame  # benchmarks/budget_validation.py
from common import mean_sd  # benchmarks/common.py
from mix_protocols import fused_scores  # benchmarks/mix_protocols.py


def abnormal_validation_films() -> pd.DataFrame:
    frame = pooled_protocol("nih14").pool
    nih_test = set(load_protocol("nih").test["patient_id"].astype(str))
    frame = frame[~frame["patient_id"].astype(str).isin(nih_test) & (frame["label"] == 1)]
    return frame.reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the adult-weighted runs' folder ({seed} is replaced)")
    ap.add_argument("--default", default="dae-cxr-64-300k")
    ap.add_argument("--pool", default="adult-weighted", choices=["adult-weighted", "mix"],
                    help="the pool the runs trained on")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    default = load_detector(args.default, "cpu")
    seen_by_default = training_prefixes(args.default)
    tmp = Path(tempfile.mkdtemp(prefix="cxrad-fusion-"))
    if args.pool == "mix":  # validation_frame reads the pool as a CSV: written once for every seed
        training_pool("mix").to_csv(tmp / "mix.csv", index=False)
    else:  # the pool each seed's member held its normals out of, decoded once
        abnormal = abnormal_validation_films()
        pool = load_images(training_pool("adult-weighted"), default.prep, cache_dir=args.cache_dir)
        normal = pool.subset(pool.labels == 0)
    rows = []
    for seed in args.seeds:
        bundle = Path(args.run.replace("{seed}", str(seed))) / "bundle"
        member, trained = load_detector(bundle, "cpu"), training_prefixes(bundle)
        if args.pool == "mix":
            films = validation_frame(tmp / "mix.csv", seen_by_default | trained)[["path", "label", "sha256"]]
        else:
            _, held = hold_out_normals(normal, member.val_fraction, seed)
            frame = held.frame

            def seen(prefixes):
                return frame["sha256"].map(lambda h: any(h.startswith(p) for p in prefixes)).to_numpy()
            assert not seen(trained).any(), "a held-out normal is among the member's training images"
            unseen = frame["source"].str.startswith("nih_").to_numpy() & ~seen(seen_by_default)
            films = pd.concat([frame[unseen], abnormal], ignore_index=True)[["path", "label", "sha256"]]
        row = {"seed": seed, "normals": int((films["label"] == 0).sum()), "abnormal": int(films["label"].sum())}
        for name, members in (("default", [default]), ("member", [member]), ("fusion", [default, member])):
            scores, images = fused_scores(members, films, args.cache_dir)
            row[name] = evaluate(images.labels, scores, n_boot=0)["auroc"]
        rows.append(row)
        print(row, flush=True)
    shutil.rmtree(tmp)
    args.out.mkdir(parents=True, exist_ok=True)
    which = ("the adult NIH normals that seed's adult-weighted DAE held out (and the default never trained on)"
             if args.pool != "mix" else "the NIH training-side normals neither model trained on")
    lines = [f"## Members trained on the {args.pool} pool", "",
             f"Per seed: {which} against the {rows[0]['abnormal']} NIH training-side films with any finding that "
             "no protocol tests on. Image AUROC; no test split is involved.", "",
             f"| seed | normals | default | {args.pool} DAE | fusion |", "|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['normals']} | {r['default']:.3f} | {r['member']:.3f} | {r['fusion']:.3f} |"
              for r in rows]
    lines += [f"| mean ± sd | | {mean_sd([r['default'] for r in rows])} | "
              f"{mean_sd([r['member'] for r in rows])} | {mean_sd([r['fusion'] for r in rows])} |", "",
              f"Command: `python benchmarks/fusion_validation.py --pool {args.pool} --run '{args.run}' --seeds "
              + " ".join(map(str, args.seeds)) + "`", ""]
    with (args.out / "fusion_validation.jsonl").open("a") as fh:
        fh.writelines(json.dumps({**r, "pool": args.pool}) + "\n" for r in rows)
    md = args.out / "fusion_validation.md"
    if not md.exists():
        md.write_text("# Fusions of the default with another DAE, on validation labels\n\n")
    with md.open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
