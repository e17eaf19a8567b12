"""``cxrad train``: fit a detector on the normal images of a dataset and save a bundle."""
from __future__ import annotations

import sys
from pathlib import Path

from cxrad.errors import CxradError, UserError
from cxrad.frontends.cli.common import (EXIT_OK, add_common, cache_dir, check_settings, load_model,
                                        model_params, open_manifest, require_classes)

#: flags that set a detector setting of the same name only when given (the detector's default wins otherwise)
SETTING_FLAGS = ("epochs", "image_size", "resize", "seed", "val_fraction", "specificity", "batch_size",
                 "max_minutes", "checkpoint_minutes", "keep", "patience")
#: the CSV of every epoch's losses, in the output folder
LOSS_LOG = "losses.csv"


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("train", help="train a detector on the normal images of a dataset",
                       description="Train a detector on normal images (abnormal rows are ignored), hold out a "
                       "patient-level normal validation part, set thresholds, and save a model bundle. "
                       "Training checkpoints go to OUT/checkpoint every few minutes: a killed or time-boxed run "
                       "(--max-minutes) continues when the same command is run again (a run with other settings or "
                       "data starts afresh, and says what differs). Every epoch's losses go to OUT/losses.csv.",
                       epilog=_settings_epilog(argv))
    add_common(p)
    p.add_argument("--detector", default=None, help="which detector (default: the kind of the shipped default "
                   "model's networks, dae; or the --init model's); `cxrad detectors` lists them with their settings")
    p.add_argument("--out", default="runs/model", help="folder for the model bundle (default runs/model)")
    p.add_argument("--init", metavar="MODEL", help="fine-tune: start from this bundle's weights (a folder or a "
                   "shipped model name) and train on --data")
    p.add_argument("--epochs", type=int, help="training epochs (default: the detector's own, e.g. the DAE's 100; "
                   "training starts by printing an estimate of how long the run will take)")
    p.add_argument("--keep", choices=["last", "best"], help="the model keeps the last epoch's weights (default) or "
                   "the best epoch's, by the loss on the held-out normal validation images")
    p.add_argument("--patience", type=int, metavar="N", help="early stopping: stop when the held-out normal "
                   "images' loss has not improved for N epochs")
    p.add_argument("--max-minutes", type=float, help="stop at the first epoch end after M minutes and save the "
                   "model so far; the same command continues the run")
    p.add_argument("--checkpoint-minutes", type=float, help="minutes between checkpoints (default 5)")
    p.add_argument("--keep-checkpoint", action="store_true", help="keep OUT/checkpoint after a finished run "
                   "(to extend it later with more --epochs)")
    p.add_argument("--image-size", type=int, help="square input side in pixels (default: the detector's own)")
    p.add_argument("--resize", choices=["stretch", "pad"], help="stretch to square (the CAE write-up) or keep "
                   "the aspect ratio and pad (default: the detector's own, stretch)")
    p.add_argument("--seed", type=int, help="seed of the weights, shuffling and validation hold-out (default 0)")
    p.add_argument("--batch-size", type=int, help="images per training batch (default: the detector's own)")
    p.add_argument("--val-fraction", type=float, help="share of normal images held out for thresholds (0.1)")
    p.add_argument("--specificity", type=float, help="target specificity of the quantile threshold (0.95)")
    p.add_argument("--threshold", default="quantile", choices=["quantile", "crossing", "youden", "max-f1", "fixed"],
                   help="active threshold rule (labelled rules need --calibration-data)")
    p.add_argument("--threshold-value", type=float, help="the threshold for --threshold fixed")
    p.add_argument("--calibration-data", help="labelled validation set (normal + abnormal; read with the same "
                   "--data-kind/--normal/--abnormal) for the crossing, youden and max-f1 rules")
    p.add_argument("--calibration-split", help="keep only this publisher split of --calibration-data")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="detector setting (repeatable); "
                   "`cxrad detectors KIND` lists them")
    p.add_argument("--unlabelled", metavar="DATA", help="films of unknown label (a folder of images, or any "
                   "dataset; labels are ignored) for detectors that learn from them (ddad); test patients must "
                   "not be among them")
    p.set_defaults(func=run)


def _settings_epilog(argv: list[str]) -> str | None:
    """``cxrad train --detector KIND --help`` ends with that detector's settings (this imports torch)."""
    if "--detector" not in argv or not {"-h", "--help"} & set(argv):
        return None
    i = argv.index("--detector")
    if i + 1 >= len(argv):
        return None
    from cxrad.frontends.cli.detectors import describe
    try:
        return describe(argv[i + 1])
    except CxradError:
        return None


def run(args) -> int:
    from cxrad.data import load_images
    from cxrad.detectors import detector_class
    from cxrad.training import distributed

    if not args.data:
        raise UserError("--data is required (or give 'data:' in --config)")
    if args.threshold != "quantile" and args.threshold != "fixed" and not args.calibration_data:
        raise UserError(f"the {args.threshold} threshold needs --calibration-data with abnormal images")
    if args.threshold == "fixed" and args.threshold_value is None:
        raise UserError("--threshold fixed needs --threshold-value")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    if args.patience is not None and args.patience < 1:
        raise UserError(f"--patience must be at least 1 epoch, got {args.patience}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the model bundle")

    given = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k) is not None}
    params = {**model_params(args), **given}
    runtime = {"device": args.device, "progress": not args.quiet, "cache_dir": cache_dir(args)}
    if args.init:
        det = load_model(args, model=args.init)
        if args.detector and args.detector != det.kind:
            raise UserError(f"--init {args.init} is a {det.kind} model, not a {args.detector} one")
        if not getattr(det, "supports_warm_start", False):
            raise UserError(f"a {det.kind} model cannot be fine-tuned from its weights; --init does not apply")
        for fixed in ("image_size", "resize"):
            if fixed in params and params[fixed] != getattr(det, fixed):
                raise UserError(f"--init keeps the model's {fixed} ({getattr(det, fixed)}); it cannot be changed")
        check_settings(type(det), params)
        det.set_params(**params, **runtime, warm_start=True, checkpoint_dir=str(out / "checkpoint"),
                       **_loss_log(type(det), out))
    else:
        cls = detector_class(args.detector or default_kind())
        check_settings(cls, params)
        if "checkpoint_dir" in {s["name"] for s in cls.settings()}:
            runtime["checkpoint_dir"] = str(out / "checkpoint")
        det = cls(**params, **runtime, **_loss_log(cls, out))
    det.check_settings()  # a wrong type or value (--param epochs=abc) stops here, before any image is read

    df = open_manifest(args)
    require_classes(df, args, "to train on (detectors learn from normal images only)")
    normals = df[df["label"] == 0]
    images = load_images(normals, det.prep, cache_dir=det.cache_dir, progress=not args.quiet)
    if len(images.errors):
        print(f"skipped {len(images.errors)} unreadable training file(s); see {out / 'errors.csv'}", file=sys.stderr)
    dist = distributed()  # under torchrun: join the process group; every rank trains, rank 0 writes
    if dist.main:
        epochs = f" for {det.epochs} epoch{'s' if det.epochs != 1 else ''}" + \
            ("" if "epochs" in params else " (its default; --epochs sets it)") if hasattr(det, "epochs") else ""
        print(f"{'fine-tuning' if args.init else 'training'} {det.kind} on {len(images)} normal images{epochs}"
              + (f" with {dist.world} processes" if dist.world > 1 else ""), file=sys.stderr)
    if dist.rank:
        det.set_params(progress=False)
    pool = unlabelled_images(args.unlabelled, det, out) if args.unlabelled else None
    det.fit(images, unlabelled=pool)
    if not dist.main:  # rank 0 calibrates and writes
        dist.finish()
        return EXIT_OK
    _calibrate(det, args, images)
    out = det.save(out)
    if len(images.errors):
        from cxrad.files import atomic_write_text, path_text
        from cxrad.detectors.results import csv_text
        errors = images.errors.assign(path=images.errors["path"].map(path_text))
        atomic_write_text(out / "errors.csv", csv_text(errors))
    finished = getattr(det, "training_finished_", True)
    if finished and not args.keep_checkpoint:
        _drop_checkpoints(out / "checkpoint")
    print(f"saved {det.kind} model to {out} (trained on {det.n_train_}, validated on {det.n_val_} normal images; "
          f"threshold {det.threshold_rule_} = {det.threshold_:.4g})")
    _say_confidence(det)
    if getattr(det, "kept_", "last") == "best":
        print(f"the model holds the weights of epoch {det.best_epoch_}, the lowest loss on the held-out normal images",
              file=sys.stderr)
    if not finished:
        print(f"stopped by --max-minutes after epoch {det.epochs_done_} of {det.epochs}: the bundle holds the model "
              "so far; run the same command again to continue", file=sys.stderr)
    dist.finish()
    return EXIT_OK


def unlabelled_images(data: str, det, out: Path):
    """The unlabelled pool: every image of a folder (scanned as `cxrad score` scans), or a dataset's rows with
    their labels ignored."""
    from cxrad.data import deduplicate, load_images, open_dataset
    from cxrad.serving.streaming import collect_files
    path = Path(data)
    if path.is_dir() and not (path / "labels.csv").exists():
        import pandas as pd
        files, _ = collect_files([path])
        frame = pd.DataFrame({"path": files, "label": 0})
    else:
        frame = open_dataset(path).assign(label=0)  # labels are ignored: unknown to whoever adapts on them
    frame, _ = deduplicate(frame)
    if frame.empty:
        raise UserError(f"--unlabelled {data}: no image files")
    pool = load_images(frame, det.prep, cache_dir=det.cache_dir, progress=det.progress)
    if len(pool.errors):
        print(f"skipped {len(pool.errors)} unreadable unlabelled file(s)", file=sys.stderr)
    print(f"learning from {len(pool)} unlabelled films as well", file=sys.stderr)
    return pool


def default_kind() -> str:
    """The kind of the shipped default model's networks (the DAE that the default fusion is made of), or the seed
    CAE if none ships."""
    from cxrad.bundles import default_name, read_meta, resolve
    name = default_name("dae")
    return read_meta(resolve(name))["kind"] if name else "cae"


def _loss_log(cls, out: Path) -> dict:
    return {"loss_log": str(out / LOSS_LOG)} if "loss_log" in {s["name"] for s in cls.settings()} else {}


def _say_confidence(det) -> None:
    """The active threshold's confidence interval, and a warning when too few held-out normals carry it."""
    from cxrad.detectors.thresholds import threshold_confidence
    confidence = threshold_confidence(det.normal_scores_, det.threshold_)
    print(f"threshold {det.threshold_rule_}: {confidence.describe()}", file=sys.stderr)
    if confidence.warning():
        print(f"warning: {confidence.warning()}", file=sys.stderr)


def _calibrate(det, args, train_images) -> None:
    from cxrad.detectors.thresholds import operating_point
    if args.calibration_data:
        from cxrad.data import load_images
        cal_df = open_manifest(args, data=args.calibration_data, split=args.calibration_split or "")
        if args.threshold not in ("quantile", "fixed"):
            require_classes(cal_df, args, f"(the {args.threshold} threshold needs both)", data=args.calibration_data,
                            abnormal=True)
        overlap = set(cal_df["sha256"]) & set(train_images.frame.get("sha256", []))
        if overlap:
            print(f"warning: {len(overlap)} calibration image(s) are also training images; thresholds set on "
                  "them are optimistic", file=sys.stderr)
        labelled = load_images(cal_df, det.prep, cache_dir=det.cache_dir)
        mode = "specificity" if args.threshold == "quantile" else args.threshold
        det.set_operating_point(operating_point(det, mode, value=args.threshold_value, labelled=labelled,
                                                target=det.specificity))
    elif args.threshold == "fixed":
        det.set_operating_point(operating_point(det, "fixed", value=args.threshold_value))


def _drop_checkpoints(folder: Path) -> None:
    """A finished run keeps no resumable state (sample grids and snapshots stay), and no empty folders."""
    from cxrad.training import CHECKPOINT_FILE
    for f in folder.rglob(CHECKPOINT_FILE):
        f.unlink()
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [folder]:
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
