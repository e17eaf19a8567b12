"""``cxrad score``: score image files with a trained model, streaming results to disk."""
from __future__ import annotations

import sys
from pathlib import Path

from cxrad.errors import UserError
from cxrad.frontends.cli.common import (EXIT_OK, EXIT_SOME_FAILED, add_common, add_model_flags, apply_operating_point,
                                        cache_dir, load_model, score_rows_text)


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("score", help="score image files with a trained model",
                       description="Score PNG, JPEG, TIFF, BMP or DICOM files or folders (DICOM files without an "
                       "extension are recognised by their preamble) with a model bundle, a shipped model or an ONNX "
                       "export (`cxrad export`; scored by onnxruntime). One row per file: score (higher = more "
                       "anomalous), components, percentile among held-out normal images, verdict. An unreadable file "
                       "gets an error row with the reason and no verdict; exit code 3 if any failed. With --out, rows "
                       "are appended to OUT/scores.csv and OUT/scores.jsonl as they are scored. With --engine ray, "
                       "a Ray cluster scores them (docs/scale.md): shards OUT/scores-00000.csv/.jsonl, then the "
                       "merged OUT/scores.csv/.jsonl.")
    add_common(p, data=False)
    p.add_argument("images", nargs="*", help="image files or folders")
    p.add_argument("--files-from", metavar="LIST", help="also score the files named in LIST: a text file (one path "
                   "a line) or a CSV with a path (or file) column; relative paths are read from LIST's folder")
    add_model_flags(p, out_help="folder for scores.csv and scores.jsonl (written as scoring proceeds), and "
                    "ignored.csv (files of scanned folders that are not images)")
    p.add_argument("--resume", action="store_true", help="skip files already in OUT/scores.csv")
    p.add_argument("--maps", metavar="DIR", help="also write each scored file's anomaly map, drawn over the "
                   "radiograph, as DIR/<name>-<hash>.png (from the same forward pass as its score; for models "
                   "that give a map)")
    p.add_argument("--batch-size", type=int, default=64, help="images decoded and scored together (64)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (2)")
    p.add_argument("--threads", type=int, default=None, help="the model's threads: it scores that many batches "
                   "at once, one thread each (default: one per core)")
    p.add_argument("--json", action="store_true", help="print JSON Lines (one object per file, as each batch "
                   "is scored) instead of a table")
    ray = p.add_argument_group("Ray engine (pip install 'cxrad[ray]')")
    ray.add_argument("--engine", default="local", choices=["local", "ray"], help="local: this process (default); "
                     "ray: a pool of Ray actors, one CPU each, the model loaded once per actor")
    ray.add_argument("--address", help="Ray cluster to use: 'auto' (the cluster this machine is part of), "
                     "'ray://HOST:10001', or HOST:6379 (default: start a local Ray)")
    ray.add_argument("--actors", type=int, help="scoring actors (default: one per CPU of the cluster)")
    ray.add_argument("--shard-size", type=int, default=10_000, help="files per output shard (10000); --resume "
                     "skips the shards already written")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.engine != "ray" and (args.address or args.actors):
        raise UserError("--address and --actors are for --engine ray")
    if args.actors is not None and args.actors < 1:
        raise UserError("--actors must be at least 1")
    if not args.images and not args.files_from:
        raise UserError("no images given: name files or folders, or --files-from LIST")
    if args.resume and not args.out:
        raise UserError("--resume needs --out (the folder whose scores.csv is continued)")
    if args.batch_size < 1 or args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise UserError("--batch-size, --workers and --threads must be at least 1")
    from cxrad.bundles import resolve
    from cxrad.detectors.results import json_lines
    from cxrad.detectors.thresholds import operating_point
    from cxrad.serving.onnx_export import OnnxScorer
    from cxrad.serving.streaming import collect_files, read_file_list, score_to_files, summarise

    det = load_model(args, exports=True, threads=1)  # an export's session: one thread per batch in flight
    if isinstance(det, OnnxScorer) and args.engine == "ray":
        raise UserError(f"--engine ray scores with a model bundle; {args.model} is an ONNX export (score it with "
                        "the default --engine local, or give the bundle it was exported from)")
    maps = _map_writer(det, Path(args.maps)) if args.maps else None
    if maps is not None and args.engine == "ray":
        raise UserError("--maps works with --engine local only")
    apply_operating_point(det, args)
    files, ignored = collect_files(args.images)
    if args.files_from:
        files += read_file_list(args.files_from)
    if not files:
        raise UserError("no image files given" + (f" ({len(ignored)} file(s) ignored: not images)" if len(ignored)
                                                 else ""))
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    stream = (lambda rows: print(json_lines(rows), end="", flush=True)) if args.json else None
    if args.engine == "ray":
        from cxrad.serving.ray_engine import score_with_ray
        if out is None:
            raise UserError("--engine ray writes sharded outputs: give --out")
        table = score_with_ray(resolve(args.model), files, out, address=args.address, actors=args.actors,
                               batch_size=args.batch_size, shard_size=args.shard_size, cache_dir=cache_dir(args),
                               resume=args.resume, progress=not args.quiet,
                               operating_point=operating_point(det, "stored"))
        summary = summarise(table)
        if stream:
            stream(table)
    else:
        summary = score_to_files(det, files, out, resume=args.resume, batch_size=args.batch_size,
                                 workers=args.workers, cache_dir=cache_dir(args), progress=not args.quiet,
                                 threads=args.threads, on_batch=stream, pictures=("map",) if maps else (),
                                 on_pictures=maps)
    if out is not None:
        if len(ignored):
            from cxrad.files import atomic_write_text
            from cxrad.detectors.results import csv_text
            atomic_write_text(out / "ignored.csv", csv_text(ignored))
        from cxrad.files import path_text
        print(f"wrote {path_text(out / 'scores.csv')} and {path_text(out / 'scores.jsonl')}", file=sys.stderr)
    if not args.json:
        print(score_rows_text(summary.head))
        if summary.rows > len(summary.head):
            print(f"... {summary.rows - len(summary.head)} more row(s)"
                  + (f" in {out / 'scores.csv'}" if out is not None else " (give --out to keep every row)"))
    for path, reason in ignored.itertuples(index=False):
        print(f"ignored {path}: {reason}", file=sys.stderr)
    if maps is not None:
        print(f"wrote {maps.written} anomaly map(s) under {args.maps}/", file=sys.stderr)
    failed = summary.errors
    if failed:
        print(f"{failed} of {summary.rows} file(s) could not be scored; see the error column", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


class _MapWriter:
    """``on_pictures`` of the streaming scorer: each scored file's map over its radiograph, as a PNG."""

    def __init__(self, det, folder: Path):
        self.det, self.folder, self.written = det, folder, 0

    def __call__(self, images, table, pictures) -> None:
        import numpy as np
        from PIL import Image

        from cxrad.detectors.results import table_rows
        from cxrad.errors import ImageReadError
        from cxrad.files import atomic_open
        from cxrad.frontends.heatmaps import display_image, map_overlay
        from cxrad.imaging import read_image

        for j, row in enumerate(table_rows(images)):
            path = str(table["path"].iloc[row])
            try:  # drawn over the file at display size: the model's input is too small to read
                picture = display_image(read_image(path))
            except ImageReadError:
                continue
            with atomic_open(self.folder / map_name(path)) as fh:
                Image.fromarray(map_overlay(picture, np.asarray(pictures["map"][j]), self.det.prep)).save(fh, "PNG")
            self.written += 1


def _map_writer(det, folder: Path) -> _MapWriter:
    if "map" not in model_outputs(det):
        raise UserError(f"--maps: the {det.kind} model gives no anomaly map (its outputs: "
                        f"{', '.join(model_outputs(det))})")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--maps {folder} is a file; give a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return _MapWriter(det, folder)


def model_outputs(det) -> tuple[str, ...]:
    """What a model's scoring graph gives (a bundle's detector or an ONNX export)."""
    meta = getattr(det, "meta", None)
    return tuple(meta["outputs"]) if meta is not None else tuple(det.scoring_graph().outputs)


def map_name(path: str) -> str:
    """``<file stem>-<8 hex of the path's SHA-256>.png``: readable, and distinct for files of the same name in
    different folders; the stem is cut to safe characters (file names are input from outside)."""
    import hashlib
    import re
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:80].strip("._") or "image"
    return f"{stem}-{hashlib.sha256(path.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}.png"
