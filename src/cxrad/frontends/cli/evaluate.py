"""``cxrad evaluate``: every metric of a model on a labelled dataset."""
from __future__ import annotations

import sys
from pathlib import Path

from cxrad.errors import UserError
from cxrad.frontends.cli.common import (EXIT_OK, EXIT_SOME_FAILED, add_common, add_model_flags, apply_operating_point,
                                        cache_dir, load_model, open_manifest, require_classes)


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model on a labelled dataset",
                       description="Score a labelled dataset (with a model bundle, a shipped model or an ONNX "
                       "export) and report AUROC (bootstrap 95% CI), AUPRC, "
                       "sensitivity, specificity, precision, F1, accuracy and the confusion matrix at the "
                       "model's threshold, per source and per finding, and the per-class component means.")
    add_common(p)
    add_model_flags(p, out_help="folder for scores.csv/jsonl, metrics.json and the breakdown tables")
    p.add_argument("--protocol", metavar="NAME", help="evaluate a benchmark protocol's test split by name "
                   "(kermany224, tb, nih, nih14, covid) from the shared data folder ($CXRAD_DATA, ../shared/data, "
                   "or --data as that folder)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cxrad.evaluation import evaluate_model, format_metrics

    if not args.data and not args.protocol:
        raise UserError("give --data (a labelled dataset), --protocol NAME, or 'data:' in --config")
    det = load_model(args, exports=True)
    apply_operating_point(det, args)
    if args.protocol:
        data = protocol_test(args)
    else:
        data = open_manifest(args)
        require_classes(data, args, "(evaluation needs both normal and abnormal images)", abnormal=True)
    result = evaluate_model(det, data, Path(args.out) if args.out else None, cache_dir(args), not args.quiet)
    print(format_metrics(result))
    return EXIT_SOME_FAILED if result["n_errors"] else EXIT_OK


def protocol_test(args):
    from cxrad.data.protocols import PROTOCOLS, default_data_root, load_protocol
    if args.protocol not in PROTOCOLS:
        raise UserError(f"--protocol {args.protocol!r} is not a protocol; choose from {', '.join(PROTOCOLS)}")
    root = Path(args.data) if args.data else default_data_root()
    if not (root / "README.md").exists() and not any(root.glob("*/labels.csv")):
        raise UserError(f"the shared data folder is not at {root}: set $CXRAD_DATA or give --data FOLDER")
    proto = load_protocol(args.protocol, root)
    print(proto.summary(), file=sys.stderr)
    return proto.test
