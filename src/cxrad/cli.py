"""The ``cxrad`` command: train, score, evaluate (and demo).

Settings come from flags or from a YAML file (``--config``) whose keys are the long flag names with
dashes or underscores; flags given on the command line win. Model-specific settings go in ``params:``
(YAML) or ``--param key=value``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FATAL, EXIT_SOME_FAILED = 0, 1, 3


class UserError(Exception):
    """Stops the command with a one-line message and exit code 1."""


# ------------------------------------------------------------------------------------------ helpers
def _parse_value(text: str):
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _model_params(args) -> dict:
    params = dict(getattr(args, "params", None) or {})
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--param needs key=value, got {item!r}")
        params[key.replace("-", "_")] = _parse_value(value)
    return params


def _load_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        import yaml
        path = Path(args.config)
        if not path.exists():
            raise UserError(f"config file {path} not found")
        doc = yaml.safe_load(path.read_text()) or {}
        if not isinstance(doc, dict):
            raise UserError(f"{path}: a config file must be a mapping of settings")
        defaults = {k.replace("-", "_"): v for k, v in doc.items()}
        sub = args._subparser
        known = {a.dest for a in sub._actions} | {"params"}
        unknown = set(defaults) - known
        if unknown:
            raise UserError(f"{path}: unknown settings {sorted(unknown)}")
        sub.set_defaults(**defaults)
        args = parser.parse_args(argv)
    return args


def _manifest(args):
    from .data import deduplicate, open_dataset
    normal = tuple(args.normal) if args.normal else ("NORMAL",)
    df = open_dataset(args.data, kind=args.data_kind, normal=normal,
                      abnormal=tuple(args.abnormal) if args.abnormal else None)
    if args.split:
        df = df[df["orig_split"].str.lower() == args.split.lower()].reset_index(drop=True)
        if df.empty:
            raise UserError(f"{args.data}: no images in split {args.split!r}")
    df, dropped = deduplicate(df)
    if dropped:
        print(f"removed {dropped} duplicate file(s) (same content hash)", file=sys.stderr)
    return df


def _cache_dir(args) -> str:
    from .data import default_cache_dir
    return str(args.cache_dir or default_cache_dir())


def _write_table(table, out: Path, stem: str) -> None:
    from .bundle import atomic_write_text
    atomic_write_text(out / f"{stem}.csv", table.to_csv(index=False))
    atomic_write_text(out / f"{stem}.json", table.to_json(orient="records", indent=1))


# --------------------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from .bundle import detector_class
    from .data import load_images

    if args.threshold not in ("quantile", "fixed") and not args.calibration_data:
        raise UserError(f"the {args.threshold} threshold needs --calibration-data with abnormal images")
    df = _manifest(args)
    normals = df[df["label"] == 0]
    if normals.empty:
        raise UserError(f"{args.data}: no normal images to train on (detectors learn from normal images only)")
    cls = detector_class(args.detector)
    common = {"image_size": args.image_size, "resize": args.resize, "seed": args.seed, "device": args.device,
              "val_fraction": args.val_fraction, "specificity": args.specificity, "progress": not args.quiet,
              "checkpoint_dir": str(Path(args.out) / "checkpoint"), "cache_dir": _cache_dir(args)}
    if args.epochs is not None:
        common["epochs"] = args.epochs
    det = cls(**common, **_model_params(args))
    images = load_images(normals, det.prep, cache_dir=det.cache_dir, progress=not args.quiet)
    if len(images.errors):
        print(f"skipped {len(images.errors)} unreadable training file(s); see errors.csv", file=sys.stderr)
    det.fit(images)
    if args.calibration_data:
        from .data import open_dataset
        cal = load_images(open_dataset(args.calibration_data), det.prep, cache_dir=det.cache_dir)
        det.calibrate(cal, rule=args.threshold, value=args.threshold_value)
    elif args.threshold == "fixed":
        det.set_threshold(value=args.threshold_value)
    elif args.threshold != "quantile":
        raise UserError(f"the {args.threshold} threshold needs --calibration-data with abnormal images")
    out = det.save(args.out)
    if len(images.errors):
        _write_table(images.errors, out, "errors")
    print(f"saved {det.kind} model to {out} (trained on {det.n_train_}, validated on {det.n_val_} normal images; "
          f"threshold {det.threshold_rule_} = {det.threshold_:.4g})")
    return EXIT_OK


def _score_inputs(paths: list[str]) -> list[str]:
    from .data import IMAGE_SUFFIXES
    files: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        else:
            files.append(str(p))  # a missing file becomes an error row, not a crash
    if not files:
        raise UserError("no image files given")
    return files


def cmd_score(args) -> int:
    from .pretrained import load_model
    det = load_model(args.model, args.device)
    _apply_operating_point(det, args)
    table = det.score(_score_inputs(args.images))
    keep = [c for c in ("path", "score", *det.components, "percentile", "anomalous", "error") if c in table]
    table = table[keep]
    if args.out:
        out = Path(args.out)
        _write_table(table, out, "scores")
        print(f"wrote {out / 'scores.csv'} and {out / 'scores.json'}", file=sys.stderr)
    _print(table, args.json)
    failed = int((table["error"] != "").sum())
    if failed:
        print(f"{failed} of {len(table)} file(s) could not be scored; see the error column", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _apply_operating_point(det, args) -> None:
    if getattr(args, "threshold_value", None) is not None:
        det.set_threshold(value=args.threshold_value)
    elif getattr(args, "target_specificity", None) is not None:
        det.set_threshold(specificity=args.target_specificity)


def _print(table, as_json: bool) -> None:
    import pandas as pd
    if as_json:
        print(table.to_json(orient="records", indent=1))
    else:
        with pd.option_context("display.max_rows", 200, "display.width", 160, "display.max_colwidth", 60):
            print(table.to_string(index=False))


def evaluate_model(det, df, out: Path | None, cache_dir=None, progress=False) -> dict:
    """Score a labelled manifest (or an already loaded ImageSet) and compute every metric; writes
    scores/metrics files when ``out`` is set."""
    from .bundle import atomic_write_text
    from .data import ImageSet, load_images
    from .metrics import breakdown, class_means, component_aurocs, evaluate

    images = df if isinstance(df, ImageSet) else load_images(df, det.prep, cache_dir=cache_dir, progress=progress)
    table = det.score(images)
    ok = table[table["error"] == ""]
    result = {"model": det.kind, "threshold_rule": det.threshold_rule_,
              **evaluate(ok["label"], ok["score"], det.threshold_)}
    if hasattr(det, "component_thresholds"):
        result["component_thresholds"] = det.component_thresholds()
    result["components"] = component_aurocs(det, ok)
    result["n_errors"] = int(len(images.errors))
    tables = {"by_source": breakdown(ok, "source", det.threshold_), "by_finding": breakdown(ok, "finding",
                                                                                            det.threshold_),
              "class_means": class_means(ok, list(det.components) + ["score"])}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_table(table, out, "scores")
        for name, t in tables.items():
            atomic_write_text(out / f"{name}.csv", t.to_csv(index=False))
        atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
    result["tables"] = tables
    result["scores"] = table  # per-image rows (image rows first, in ImageSet order), for reports
    return result


def format_metrics(result: dict) -> str:
    lo, hi = result["auroc_ci"]
    cm = result.get("confusion_matrix", {})
    lines = [
        f"images: {result['n']} ({result['n_normal']} normal, {result['n_abnormal']} abnormal)"
        + (f", {result['n_errors']} unreadable" if result.get("n_errors") else ""),
        f"AUROC {result['auroc']:.3f} (95% CI {lo:.3f}-{hi:.3f})   AUPRC {result['auprc']:.3f}",
        f"threshold ({result['threshold_rule']}) {result['threshold']:.4g}: sensitivity {result['sensitivity']:.3f}"
        f"  specificity {result['specificity']:.3f}  precision {result['precision']:.3f}  F1 {result['f1']:.3f}"
        f"  accuracy {result['accuracy']:.3f}",
        f"confusion matrix: TN {cm.get('tn')}  FP {cm.get('fp')}  FN {cm.get('fn')}  TP {cm.get('tp')}",
    ]
    if result.get("components"):
        lines.append("component AUROC: " + "  ".join(f"{k} {v:.3f}" for k, v in result["components"].items()))
    for name in ("class_means", "by_source", "by_finding"):
        t = result.get("tables", {}).get(name)
        if t is not None and len(t):
            lines += [f"\n{name.replace('_', ' ')}:", t.to_string(index=False, float_format=lambda v: f"{v:.4g}")]
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from .pretrained import load_model
    det = load_model(args.model, args.device)
    _apply_operating_point(det, args)
    df = _manifest(args)
    result = evaluate_model(det, df, Path(args.out) if args.out else None, _cache_dir(args), not args.quiet)
    print(format_metrics(result))
    return EXIT_SOME_FAILED if result["n_errors"] else EXIT_OK


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(Path(args.out), device=args.device, epochs=args.epochs, quiet=args.quiet)


# ----------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .bundle import DETECTORS
    from .thresholds import RULES

    parser = argparse.ArgumentParser(prog="cxrad", description=(
        "Unsupervised anomaly detection on chest X-rays: learn what healthy radiographs look like from normal "
        "images only, then flag the ones that deviate. A research tool, not a diagnostic device."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, data=True):
        p.set_defaults(_subparser=p)
        p.add_argument("--config", help="YAML file of settings (keys = long flag names); flags override it")
        p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N]")
        p.add_argument("--cache-dir", default=None,
                       help="preprocessing cache (default: $CXRAD_CACHE or ~/.cache/cxrad)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if data:
            p.add_argument("--data", required=False, help="dataset: a folder of class sub-folders, an NLM folder "
                           "(*_0/_1 names), a CSV manifest, a folder with labels.csv, or a MedMNIST .npz")
            p.add_argument("--data-kind", default="auto", choices=["auto", "folder", "nlm", "csv", "npz"])
            p.add_argument("--normal", nargs="+", help="class folder names that are normal (default NORMAL)")
            p.add_argument("--abnormal", nargs="+", help="class folder names that are abnormal (default: all others)")
            p.add_argument("--split", help="keep only rows of this publisher split (e.g. train, test)")

    def model_args(p, out_help):
        p.add_argument("--model", default=None, help="model bundle folder or shipped model name (default: the "
                       "shipped default model)")
        p.add_argument("--out", help=out_help)
        p.add_argument("--target-specificity", type=float, help="operating point: this specificity on the "
                       "model's held-out normal validation scores instead of the stored threshold")
        p.add_argument("--threshold-value", type=float, help="operating point: a fixed score threshold")

    p = sub.add_parser("train", help="train a detector on the normal images of a dataset",
                       description="Train a detector on normal images (abnormal rows are ignored), hold out a "
                       "patient-level normal validation part, set thresholds, and save a model bundle. "
                       "A killed run resumes from OUT/checkpoint when started again with the same --out.")
    common(p)
    p.add_argument("--detector", default="cae", choices=sorted(DETECTORS), help="which detector (default cae)")
    p.add_argument("--out", default="runs/model", help="folder for the model bundle (default runs/model)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the detector's own)")
    p.add_argument("--image-size", type=int, default=128, help="square input side in pixels (default 128)")
    p.add_argument("--resize", default="stretch", choices=["stretch", "pad"],
                   help="stretch to square (the CAE paper) or keep aspect and pad")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1, help="normal images held out for thresholds")
    p.add_argument("--specificity", type=float, default=0.95, help="target specificity of the quantile rule")
    p.add_argument("--threshold", default="quantile", choices=RULES, help="active threshold rule")
    p.add_argument("--threshold-value", type=float, help="the threshold for --threshold fixed")
    p.add_argument("--calibration-data", help="labelled validation set (normal + abnormal) for the crossing, "
                   "youden and max-f1 rules")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="detector-specific setting (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="score image files with a trained model",
                       description="Score PNG/JPEG/DICOM files (or folders of them). Prints one row per file: "
                       "score (higher = more anomalous), components, percentile among held-out normal images, "
                       "verdict. Unreadable files get an error row; exit code 3 if any failed.")
    common(p, data=False)
    p.add_argument("images", nargs="+", help="image files or folders")
    model_args(p, out_help="folder to write scores.csv and scores.json")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("evaluate", help="evaluate a model on a labelled dataset",
                       description="Score a labelled dataset and report AUROC (bootstrap 95%% CI), AUPRC, "
                       "sensitivity, specificity, precision, F1, accuracy and the confusion matrix at the "
                       "model's threshold, per source and per finding, and the per-class component means.")
    common(p)
    model_args(p, out_help="folder for scores.csv/json, metrics.json and the breakdown tables")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="train, score and evaluate on the bundled sample images",
                       description="The main job on bundled defaults: train the seed CAE on bundled normal CC BY "
                       "images, score bundled normal and abnormal images with it and with the shipped default "
                       "model, print the metrics, and write everything under --out.")
    p.set_defaults(_subparser=p)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    from .report.cli import add_parser as add_report_parser
    add_report_parser(sub, common)
    from .app.launch import add_app_command
    add_app_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .bundle import BundleError
    from .data import DataError
    from .detector import NotFittedError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = _load_config(parser, argv)
        if hasattr(args, "data") and args.command in ("train", "evaluate") and not args.data:
            raise UserError("--data is required (or give 'data:' in --config)")
        return args.func(args)
    except (UserError, DataError, BundleError, NotFittedError, FileNotFoundError, ValueError, RuntimeError) as exc:
        if os.environ.get("CXRAD_DEBUG"):  # developers want the traceback
            raise
        print(f"cxrad: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("cxrad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
