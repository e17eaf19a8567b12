"""Scoring many files with flat memory: decoding runs in worker threads one batch ahead of the model, rows
are appended to the output as each batch finishes (so a killed run keeps what it scored and ``resume`` skips
it), and nothing but the result rows is kept.

    for rows in score_stream(det, files, cache_dir=...):   # DataFrames of up to batch_size rows
        ...
    score_to_files(det, files, "runs/scores")                # scores.csv + scores.jsonl, resumable
"""
from __future__ import annotations

import contextlib
import csv
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

from cxrad.data.manifests import IMAGE_SUFFIXES
from cxrad.data import load_images
from cxrad.errors import UserError
from cxrad.detectors.results import json_lines, score_columns
from cxrad.files import UnsafeFileError, atomic_write_text, open_regular_file

DICOM_MAGIC_OFFSET = 128


def looks_like_dicom(path: Path) -> bool:
    """True for a regular file with the DICM preamble (PACS exports often have no extension); a device or a
    FIFO is never opened."""
    try:
        with open_regular_file(path, sys.maxsize) as fh:  # any size: only the preamble is read
            head = fh.read(DICOM_MAGIC_OFFSET + 4)
    except (OSError, UnsafeFileError):
        return False
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def collect_files(inputs) -> tuple[list[str], pd.DataFrame]:
    """Expand files and folders into the files to score, and the files of scanned folders left out, each with
    its reason. A named file is always scored (a missing one becomes an error row)."""
    files, ignored = [], []
    for item in map(Path, inputs):
        if not item.is_dir():
            files.append(str(item))
            continue
        for f in sorted(item.rglob("*")):
            if f.is_dir():
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES or looks_like_dicom(f):
                files.append(str(f))
            elif f.name.startswith("."):
                ignored.append((str(f), "hidden file"))
            else:
                ignored.append((str(f), f"not an image: no image extension ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                                        "and no DICOM preamble"))
    return files, pd.DataFrame(ignored, columns=["path", "reason"])


def read_file_list(path) -> list[str]:
    """Paths from a text file (one per line) or a CSV with a path (or file) column; relative paths are taken
    from the list's folder."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--files-from {path}: cannot read it ({exc})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(lines))
        column = next((c for c in ("path", "file", "filename", "image") if rows and c in rows[0]), None)
        if column is None:
            raise UserError(f"--files-from {path}: a CSV list needs a 'path' (or 'file') column")
        lines = [row[column] for row in rows]
    return [str(p if Path(p).is_absolute() else path.parent / p) for p in (line.strip() for line in lines)]


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def model_threads(workers: int) -> int:
    """The model's intra-op threads while ``workers`` threads decode: the cores left over, at least one. More
    threads than free cores make torch's spinning workers wait on each other (up to 6x slower on a busy 2-core
    machine, never faster there)."""
    return max(1, available_cpus() - workers)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with torch using ``n`` intra-op threads (None: leave the setting), then restore it."""
    if not n:
        yield
        return
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def score_stream(det, files: list[str], batch_size: int = 64, workers: int = 2, cache_dir=None,
                 threads: int | None = None, pictures: tuple[str, ...] = (),
                 on_pictures=None) -> Iterator[pd.DataFrame]:
    """Score ``files`` in batches; each batch is decoded (``workers`` threads) while the previous one is scored
    (with ``threads`` torch threads; None: ``model_threads(workers)``). Yields the score table of each batch,
    error rows included, in input order within the batch. With ``pictures`` (e.g. ``("map",)``), each batch's
    pictures come from the same forward pass and go to ``on_pictures(images, table, pictures)``."""
    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    if not chunks:
        return

    def load(chunk):
        return load_images(chunk, det.prep, cache_dir=cache_dir, workers=workers, cache_set=False)

    with ThreadPoolExecutor(1) as prefetch, torch_threads(threads or model_threads(workers)):
        pending = prefetch.submit(load, chunks[0])
        for i in range(len(chunks)):
            images = pending.result()
            if i + 1 < len(chunks):
                pending = prefetch.submit(load, chunks[i + 1])
            if not pictures:
                yield det.score(images)
                continue
            table, drawn = det.explain(images, pictures=pictures)
            on_pictures(images, table, drawn)
            yield table


@dataclass
class ScoreSummary:
    """What a streamed scoring run produced: counts over every row (earlier runs' included when resuming)
    and the first rows, for a terminal; the rows themselves are in the output files."""

    rows: int = 0
    errors: int = 0
    anomalous: int = 0
    head: pd.DataFrame | None = None


def read_scores(csv_path) -> pd.DataFrame:
    """A score file as written: empty score and verdict cells of error rows stay missing, errors stay text."""
    return pd.read_csv(csv_path, keep_default_na=False, na_values={"score": [""], "percentile": [""]},
                       dtype={"error": str})


def _resume(csv_path: Path, jsonl_path: Path) -> pd.DataFrame:
    """The rows a killed run finished. A partial last CSV line is cut off in place, and the JSON Lines file is
    rewritten from the CSV, so both files hold the same rows before appending resumes."""
    if not csv_path.exists():
        jsonl_path.unlink(missing_ok=True)
        return pd.DataFrame()
    with open(csv_path, "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)
    done = read_scores(csv_path) if csv_path.stat().st_size else pd.DataFrame()
    atomic_write_text(jsonl_path, json_lines(done))
    return done


def _count(summary: ScoreSummary, rows: pd.DataFrame, head: int) -> None:
    errors = rows["error"].fillna("") != ""
    summary.rows += len(rows)
    summary.errors += int(errors.sum())
    summary.anomalous += int(rows.loc[~errors, "anomalous"].astype(str).str.lower().isin(["true", "1"]).sum())
    if summary.head is None or len(summary.head) < head:
        summary.head = rows.head(head) if summary.head is None else \
            pd.concat([summary.head, rows]).head(head).reset_index(drop=True)


def summarise(table: pd.DataFrame, head: int = 200) -> ScoreSummary:
    """The summary of a score table already in memory (as the Ray engine returns)."""
    summary = ScoreSummary()
    _count(summary, table, head)
    return summary


def score_to_files(det, files: list[str], out=None, resume: bool = False, batch_size: int = 64, workers: int = 2,
                   cache_dir=None, progress: bool = False, threads: int | None = None, on_batch=None,
                   head: int = 200, pictures: tuple[str, ...] = (), on_pictures=None) -> ScoreSummary:
    """Stream the scores of ``files`` into ``out``/scores.csv and scores.jsonl (nothing is written when ``out``
    is None), appending batch by batch, each write flushed to disk; ``on_batch(rows)`` sees every batch (and
    ``on_pictures`` the ``pictures`` of each, as in ``score_stream``). With ``resume``, files already in
    scores.csv are skipped. Only counts and the first ``head`` rows stay in memory."""
    summary = ScoreSummary()
    csv_path = jsonl_path = None
    done = set()
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        csv_path, jsonl_path = out / "scores.csv", out / "scores.jsonl"
        if resume:
            finished = _resume(csv_path, jsonl_path)
            if len(finished):
                done = set(finished["path"])
                _count(summary, finished, head)
        else:
            for p in (csv_path, jsonl_path):
                p.unlink(missing_ok=True)
    todo = [f for f in files if f not in done]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(files), initial=len(files) - len(todo), unit="img", desc="scoring")
    columns = None
    for table in score_stream(det, todo, batch_size, workers, cache_dir, threads, pictures, on_pictures):
        columns = columns or score_columns(table, det.components)
        rows = table[columns]
        if csv_path is not None:
            _append(csv_path, rows.to_csv(index=False, header=not csv_path.exists() or csv_path.stat().st_size == 0))
            _append(jsonl_path, json_lines(rows))
        if on_batch is not None:
            on_batch(rows)
        _count(summary, rows, head)
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    return summary


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
