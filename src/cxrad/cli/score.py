"""``cxrad score``: score image files with a trained model, streaming results to disk."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from .common import EXIT_OK, EXIT_SOME_FAILED, add_common, add_model_flags, apply_operating_point, cache_dir, \
    print_table


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("score", help="score image files with a trained model",
                       description="Score PNG/JPEG/DICOM files or folders (DICOM files without an extension are "
                       "recognised by their preamble). One row per file: score (higher = more anomalous), "
                       "components, percentile among held-out normal images, verdict. An unreadable file gets "
                       "an error row with the reason and no verdict; exit code 3 if any failed. With --out, rows "
                       "are appended to OUT/scores.csv and OUT/scores.jsonl as they are scored.")
    add_common(p, data=False)
    p.add_argument("images", nargs="+", help="image files or folders")
    add_model_flags(p, out_help="folder for scores.csv and scores.jsonl (written as scoring proceeds), and "
                    "ignored.csv (files of scanned folders that are not images)")
    p.add_argument("--resume", action="store_true", help="skip files already in OUT/scores.csv")
    p.add_argument("--batch-size", type=int, default=64, help="images decoded and scored together (64)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (2)")
    p.add_argument("--threads", type=int, default=None, help="the model's threads (default: the CPU cores left "
                   "after --workers, at least 1)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    import tempfile

    from ..pretrained import load_model
    from ..scoring import collect_files, score_to_files

    if args.resume and not args.out:
        raise UserError("--resume needs --out (the folder whose scores.csv is continued)")
    if args.batch_size < 1 or args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise UserError("--batch-size, --workers and --threads must be at least 1")
    det = load_model(args.model, args.device)
    apply_operating_point(det, args)
    files, ignored = collect_files(args.images)
    if not files:
        raise UserError("no image files given" + (f" ({len(ignored)} file(s) ignored: not images)" if len(ignored)
                                                 else ""))
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out) if args.out else Path(scratch)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; give a folder")
        table = score_to_files(det, files, out, resume=args.resume, batch_size=args.batch_size,
                               workers=args.workers, cache_dir=cache_dir(args), progress=not args.quiet,
                               threads=args.threads)
        if args.out:
            if len(ignored):
                from ..files import atomic_write_text
                atomic_write_text(out / "ignored.csv", ignored.to_csv(index=False))
            print(f"wrote {out / 'scores.csv'} and {out / 'scores.jsonl'}", file=sys.stderr)
    print_table(table, args.json)
    for path, reason in ignored.itertuples(index=False):
        print(f"ignored {path}: {reason}", file=sys.stderr)
    failed = int((table["error"].fillna("") != "").sum())
    if failed:
        print(f"{failed} of {len(table)} file(s) could not be scored; see the error column", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK
