"""``cxrad train``: fit a detector on the normal images of a dataset and save a bundle."""
from __future__ import annotations

import sys
from pathlib import Path

from cxrad.errors import CxradError, UserError
from cxrad.frontends.cli.common import EXIT_OK, add_common, cache_dir, check_settings, model_params, open_manifest

#: flags that set a detector setting of the same name only when given (the detector's default wins otherwise)
SETTING_FLAGS = ("epochs", "image_size", "resize", "seed", "val_fraction", "specificity", "batch_size",
                 "max_minutes", "checkpoint_minutes")


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("train", help="train a detector on the normal images of a dataset",
                       description="Train a detector on normal images (abnormal rows are ignored), hold out a "
                       "patient-level normal validation part, set thresholds, and save a model bundle. "
                       "Training checkpoints go to OUT/checkpoint every few minutes: a killed or time-boxed run "
                       "(--max-minutes) continues when the same command is run again.",
                       epilog=_settings_epilog(argv))
    add_common(p)
    p.add_argument("--detector", default=None, help="which detector (default cae, or the --init model's); "
                   "`cxrad detectors` lists them with their settings")
    p.add_argument("--out", default="runs/model", help="folder for the model bundle (default runs/model)")
    p.add_argument("--init", metavar="MODEL", help="fine-tune: start from this bundle's weights (a folder or a "
                   "shipped model name) and train on --data")
    p.add_argument("--epochs", type=int, help="training epochs (default: the detector's own)")
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
    from cxrad.detectors import load_detector
    from cxrad.training import distributed

    if not args.data:
        raise UserError("--data is required (or give 'data:' in --config)")
    if args.threshold != "quantile" and args.threshold != "fixed" and not args.calibration_data:
        raise UserError(f"the {args.threshold} threshold needs --calibration-data with abnormal images")
    if args.threshold == "fixed" and args.threshold_value is None:
        raise UserError("--threshold fixed needs --threshold-value")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the model bundle")

    given = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k) is not None}
    params = {**model_params(args), **given}
    runtime = {"device": args.device, "progress": not args.quiet, "cache_dir": cache_dir(args)}
    if args.init:
        det = load_detector(args.init, args.device)
        if args.detector and args.detector != det.kind:
            raise UserError(f"--init {args.init} is a {det.kind} model, not a {args.detector} one")
        if not getattr(det, "supports_warm_start", False):
            raise UserError(f"a {det.kind} model cannot be fine-tuned from its weights; --init does not apply")
        for fixed in ("image_size", "resize"):
            if fixed in params and params[fixed] != getattr(det, fixed):
                raise UserError(f"--init keeps the model's {fixed} ({getattr(det, fixed)}); it cannot be changed")
        check_settings(type(det), params)
        det.set_params(**params, **runtime, warm_start=True, checkpoint_dir=str(out / "checkpoint"))
    else:
        cls = detector_class(args.detector or "cae")
        check_settings(cls, params)
        if "checkpoint_dir" in {s["name"] for s in cls.settings()}:
            runtime["checkpoint_dir"] = str(out / "checkpoint")
        det = cls(**params, **runtime)

    df = open_manifest(args)
    normals = df[df["label"] == 0]
    if normals.empty:
        raise UserError(f"{args.data}: no normal images to train on (detectors learn from normal images only)")
    images = load_images(normals, det.prep, cache_dir=det.cache_dir, progress=not args.quiet)
    if len(images.errors):
        print(f"skipped {len(images.errors)} unreadable training file(s); see {out / 'errors.csv'}", file=sys.stderr)
    dist = distributed()  # under torchrun: join the process group; every rank trains, rank 0 writes
    if dist.main:
        print(f"{'fine-tuning' if args.init else 'training'} {det.kind} on {len(images)} normal images"
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


def _calibrate(det, args, train_images) -> None:
    from cxrad.detectors.thresholds import operating_point
    if args.calibration_data:
        from cxrad.data import load_images
        cal_df = open_manifest(args, data=args.calibration_data, split=args.calibration_split or "")
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
