"""``cxrad report``: an HTML report with every figure, and the figures as PNG."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from cxrad.errors import UserError
from cxrad.frontends.cli.common import (EXIT_OK, EXIT_SOME_FAILED, add_common, add_operating_point_flags,
                                        apply_operating_point, cache_dir, load_model, open_manifest,
                                        require_classes)


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("report", help="HTML report with every figure (and the figures as PNG)",
                       description="Evaluate a model on a labelled dataset and write a self-contained HTML report "
                       "(figures embedded, opens offline) plus every figure as PNG: loss curves, the most and "
                       "least anomalous normal and abnormal images with reconstructions and residual heatmaps, "
                       "score densities with every threshold, ROC and precision-recall curves, a t-SNE map of "
                       "the detector's features, the confusion matrix and the metric tables. The scores, "
                       "metrics and tables of `cxrad evaluate` are written beside it.")
    add_common(p)
    p.add_argument("--model", default=None, help="model bundle folder or shipped model name (default: the "
                   "shipped default model)")
    p.add_argument("--out", default="runs/report", help="folder for report.html and the PNGs (default runs/report)")
    p.add_argument("--examples", type=int, default=4, metavar="K",
                   help="most/least anomalous images shown per class (default 4)")
    p.add_argument("--max-tsne", type=int, default=1000, metavar="N",
                   help="t-SNE on at most N images, classes kept in proportion; 0 skips it (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the t-SNE subsample and embedding")
    p.add_argument("--title", help="report title")
    add_operating_point_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from cxrad.evaluation import format_metrics
    from cxrad.frontends.report import build_report

    if not args.data:
        raise UserError("--data is required (a labelled dataset with normal and abnormal images)")
    if args.examples < 1:
        raise UserError("--examples must be at least 1")
    det = load_model(args)
    apply_operating_point(det, args)
    df = open_manifest(args)
    require_classes(df, args, "(a report needs both normal and abnormal images)", abnormal=True)
    rep = build_report(det, df, Path(args.out), examples=args.examples, max_tsne=args.max_tsne,
                       seed=args.seed, cache_dir=cache_dir(args), progress=not args.quiet, title=args.title,
                       command=command_line(args))
    print(format_metrics({**rep.metrics, "tables": {}}))
    for note in rep.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {rep.html} and {len(rep.figures)} figure(s) under {Path(args.out)}/")
    return EXIT_SOME_FAILED if rep.metrics.get("n_errors") else EXIT_OK


def command_line(args) -> str:
    """The settings that shape the report, as a command to paste (config files and caches left out)."""
    words = ["cxrad", "report"]
    for flag in ("model", "data", "data_kind", "split", "out", "examples", "max_tsne", "seed",
                 "target_specificity", "threshold_value"):
        value = getattr(args, flag, None)
        if value is not None and not (flag == "data_kind" and value == "auto"):
            words += [f"--{flag.replace('_', '-')}", str(value)]
    for flag in ("normal", "abnormal"):
        if getattr(args, flag, None):
            words += [f"--{flag}", *getattr(args, flag)]
    return shlex.join(words)
