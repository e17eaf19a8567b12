"""What the commands share: common flags, config files, --param, datasets and operating points.

Nothing here imports torch, pandas or scikit-learn at module level: ``cxrad --help`` and argument errors stay
fast. Each command's ``run`` imports what it needs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cxrad.errors import UserError

EXIT_OK, EXIT_FATAL, EXIT_SOME_FAILED = 0, 1, 3
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool stopped by SIGPIPE (``... | head``)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def add_common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.set_defaults(_subparser=p)
    p.add_argument("--config", help="YAML file of settings (keys = long flag names), or the name of a config "
                   f"shipped with cxrad ({', '.join(shipped_configs()) or 'none'}); flags override it")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N]")
    p.add_argument("--cache-dir", default=None, help="preprocessing cache (default: $CXRAD_CACHE or ~/.cache/cxrad)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if data:
        add_data_flags(p)


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=False, help="dataset: a folder of class sub-folders (NORMAL, No_findings, "
                   "healthy... are normal), a folder of normal images (no sub-folders), an NLM folder (*_0/_1 "
                   "names), a CSV manifest, a folder with labels.csv or all_labels.csv, or a MedMNIST .npz")
    p.add_argument("--data-kind", default="auto", choices=["auto", "folder", "nlm", "csv", "npz"],
                   help="how to read --data (default: guessed)")
    p.add_argument("--normal", nargs="+", help="class folder names that are normal (default: the normal label "
                   "words: normal, No_findings, healthy, negative...; case, spaces, - and _ ignored)")
    p.add_argument("--abnormal", nargs="+", help="class folder names that are abnormal (default: all others)")
    p.add_argument("--split", help="keep only rows of this publisher split (e.g. train, test; 'train' also "
                   "matches 'train (Shenzhen)')")


def add_model_flags(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--model", default=None, help="model bundle folder or shipped model name (default: the "
                   "shipped default model)")
    p.add_argument("--out", help=out_help)
    add_operating_point_flags(p)


def add_operating_point_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-specificity", type=float, help="operating point: this specificity on the "
                   "model's held-out normal validation scores instead of the stored threshold")
    p.add_argument("--threshold-value", type=float, help="operating point: a fixed score threshold")


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name: str) -> Path:
    path = Path(name)
    if path.exists():
        return path
    # a shipped config by its bare name, or as a checkout's configs/NAME.yaml once named it
    shipped = path.name if path.parent == Path("configs") and path.suffix == ".yaml" else f"{name}.yaml"
    if len(path.parts) <= 2 and (CONFIG_DIR / shipped).exists() and (path.parent in (Path("."), Path("configs"))):
        return CONFIG_DIR / shipped
    raise UserError(f"config {name!r} not found: give a YAML file or one of {', '.join(shipped_configs())}")


def load_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a --config file supplies defaults that flags on the command line override."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        import yaml
        path = config_path(args.config)
        try:
            doc = yaml.safe_load(path.read_text("utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({exc})") from None
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


def parse_value(text: str):
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def model_params(args) -> dict:
    """``params:`` of the config file, then every --param key=value (values parsed as YAML)."""
    params = dict(getattr(args, "params", None) or {})
    for item in getattr(args, "param", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--param needs key=value, got {item!r}")
        params[key.strip().replace("-", "_")] = parse_value(value)
    return params


def check_settings(cls, params: dict) -> None:
    """A clear error for a setting the detector does not have, listing the ones it has."""
    unknown = cls.unknown_settings(params)
    if unknown:
        raise UserError(f"the {cls.kind} detector has no setting {', '.join(map(repr, unknown))}; its settings: "
                        f"{', '.join(s['name'] for s in cls.settings())} (`cxrad detectors {cls.kind}` explains each)")


def cache_dir(args) -> str:
    from cxrad.data import default_cache_dir
    return str(args.cache_dir or default_cache_dir())


def is_main_process() -> bool:
    """False in every process of a torchrun job but the first: notes are printed once, not once per rank."""
    return os.environ.get("RANK", "0") in ("", "0")


def open_manifest(args, data: str | None = None, split: str | None = None, note: bool = True):
    """The deduplicated manifest of --data (or ``data``), restricted to --split (or ``split``)."""
    from cxrad.data import deduplicate, open_dataset, select_split
    data = data or args.data
    normal = tuple(args.normal) if getattr(args, "normal", None) else None
    abnormal = tuple(args.abnormal) if getattr(args, "abnormal", None) else None
    df = open_dataset(data, kind=getattr(args, "data_kind", "auto"), normal=normal, abnormal=abnormal)
    split = split if split is not None else getattr(args, "split", None)
    if split:
        df = select_split(df, split, where=str(data))
    df, dropped = deduplicate(df)
    note = note and is_main_process()
    if note and dropped:
        print(f"removed {dropped} duplicate file(s) (same content hash)", file=sys.stderr)
    if note:
        outside = outside_rows(df, data)
        if outside:
            print(f"note: {outside} row(s) of {data} point outside its folder", file=sys.stderr)
    return df


def outside_rows(df, data) -> int:
    """Rows of a CSV manifest whose relative path leads outside the manifest's folder (``../x.png``: fine for
    one's own CSV, but worth knowing). Absolute paths are the writer's explicit choice and are not counted."""
    from cxrad.data import dataset_kind
    path, kind = dataset_kind(data)
    if kind != "csv":
        return 0
    base = path.parent
    inside = base.resolve()
    return int(sum(1 for p in df["path"] if "::" not in str(p) and Path(p).is_relative_to(base)
                   and inside not in Path(p).resolve().parents))


def require_classes(df, args, why: str, data=None, abnormal: bool = False) -> None:
    """A one-line error (ending in ``why``) when the data has no normal images (or, with ``abnormal``, no
    abnormal ones); for a folder of class folders it lists the class folders found and how to name the normal
    ones."""
    data = data or args.data
    missing = [name for name, label in (("normal", 0), ("abnormal", 1))
               if (label == 0 or abnormal) and not (df["label"] == label).any()]
    if not missing:
        return
    from cxrad.data import class_folders, dataset_kind
    path, kind = dataset_kind(data, getattr(args, "data_kind", "auto"))
    folders = class_folders(path) if kind == "folder" and path.is_dir() else []
    hint = f"; class folders found: {', '.join(folders)} (name the normal ones with --normal FOLDER...)" \
        if folders else ""
    raise UserError(f"{data}: no {' and no '.join(missing)} images {why}{hint}")


def load_model(args, model=None, exports: bool = False, threads: int | None = None):
    """The model of --model (or ``model``): a bundle folder, a shipped model's name or None (the shipped
    default); with ``exports`` also an ONNX export (its folder, .onnx file or sidecar), scored by onnxruntime
    with the same table. An export where a bundle is needed is a one-line error that says what it is."""
    from cxrad.serving.onnx_export import OnnxScorer, is_export
    name = args.model if model is None else model
    if name is not None and (is_export(name) or str(name).lower().endswith(".onnx")):
        if not exports:
            raise UserError(f"{name} is an ONNX export (model.onnx + model.cxrad.json), not a model bundle: "
                            f"`cxrad score` and `cxrad evaluate` take it; `cxrad {args.command}` needs the bundle "
                            "it was exported from")
        return OnnxScorer(name, threads=threads)
    from cxrad.detectors import load_detector
    return load_detector(name, getattr(args, "device", "auto"))


def apply_operating_point(det, args) -> None:
    from cxrad.detectors.thresholds import operating_point
    if getattr(args, "threshold_value", None) is not None:
        det.set_operating_point(operating_point(det, "fixed", value=args.threshold_value))
    elif getattr(args, "target_specificity", None) is not None:
        from cxrad.detectors.thresholds import threshold_confidence
        threshold = det.set_operating_point(operating_point(det, "specificity", target=args.target_specificity))
        warning = threshold_confidence(det.normal_scores_, threshold).warning()
        if warning and is_main_process():
            print(f"warning: --target-specificity: {warning.replace(' or raise --val-fraction', '')}",
                  file=sys.stderr)


#: columns of score rows that are text, not numbers
TEXT_COLUMNS = ("path", "label", "finding", "source", "anomalous", "error")


def score_rows_text(rows, limit: int = 200) -> str:
    """The terminal table of score rows, the one rendering whichever engine produced them (rows in memory, or
    read back from scores.csv): numbers to 6 significant digits, and the score, components, percentile and
    verdict of an error row left empty, as in scores.csv."""
    import numpy as np
    import pandas as pd
    shown = rows.head(limit).copy()
    failed = shown["error"].fillna("").astype(str) != "" if "error" in shown else pd.Series(False, shown.index)
    for col in shown.columns:
        if col == "anomalous":
            verdict = shown[col].map(lambda v: "" if pd.isna(v) or str(v) == "" else str(str(v).lower() in
                                                                                        ("true", "1")))
            shown[col] = verdict.where(~failed, "")
        elif col not in TEXT_COLUMNS:
            values = pd.to_numeric(shown[col], errors="coerce").to_numpy(np.float64)
            shown[col] = ["" if bad or not np.isfinite(v) else f"{v:.6g}" for v, bad in zip(values, failed)]
        else:
            shown[col] = shown[col].fillna("").astype(str)
    with pd.option_context("display.max_rows", limit, "display.width", 160, "display.max_colwidth", 60):
        text = shown.to_string(index=False)
    return text + (f"\n... {len(rows) - limit} more row(s)" if len(rows) > limit else "")
