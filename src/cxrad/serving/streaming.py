"""Scoring many files with flat memory: decoding runs in worker threads ahead of the model (which scores one batch
per core at once), rows are appended to the output as each batch finishes (so a killed run keeps what it scored
and ``resume`` skips it), and nothing but the result rows is kept.

    for rows in score_stream(det, files, cache_dir=...):   # DataFrames of up to batch_size rows
        ...
    score_to_files(det, files, "runs/scores")                # scores.csv + scores.jsonl, resumable
"""
from __future__ import annotations

import collections
import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from cxrad.data.manifests import IMAGE_SUFFIXES
from cxrad.data import load_images
from cxrad.errors import UserError
from cxrad.detectors.results import csv_text, json_lines, restore_cell, score_columns
from cxrad.files import (FolderBusyError, UnsafeFileError, atomic_write_text, folder_lock, open_regular_file,
                         path_text, read_regular_file, walk_files)

DICOM_MAGIC_OFFSET = 128
#: largest --files-from list read (bytes)
MAX_FILE_LIST_BYTES = 256 * 2**20
#: the model and operating point an output folder was scored with: --resume refuses another
RUN_RECORD = "scored-with.json"
MAX_RUN_RECORD_BYTES = 2**20


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
    its reason. A named file is always scored (a missing one becomes an error row); a name that does not exist
    and is not named like an image file is taken for a mistyped folder: a UserError. Folders are walked without
    recursion (any depth) and without following symlinks to folders; names that are not valid UTF-8 are kept."""
    files, ignored = [], []
    for item in map(os.fspath, inputs):
        if not os.path.isdir(item):
            if not os.path.lexists(item) and Path(item).suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(f"{path_text(item)}: no such file or folder")
            files.append(item)
            continue
        found, unreadable = walk_files(item)
        ignored += unreadable
        for f in found:
            name = os.path.basename(f)
            if Path(name).suffix.lower() in IMAGE_SUFFIXES or looks_like_dicom(f):
                files.append(f)
            elif name.startswith("."):
                ignored.append((f, "hidden file"))
            else:
                ignored.append((f, f"not an image: no image extension ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                                   "and no DICOM preamble"))
    return files, pd.DataFrame([(path_text(p), r) for p, r in ignored], columns=["path", "reason"])


def read_file_list(path) -> list[str]:
    """Paths from a text file (one per line; blank lines and lines starting with # are skipped) or a CSV with a
    path (or file) column; relative paths are taken from the list's folder. The list must be a regular file
    (a FIFO or a device is refused, never read); names that are not valid UTF-8 are kept as the bytes say."""
    path = Path(path)
    try:
        raw = read_regular_file(path, MAX_FILE_LIST_BYTES)
    except UnsafeFileError as exc:
        raise UserError(f"--files-from {path_text(path)}: {exc}") from None
    except OSError as exc:
        raise UserError(f"--files-from {path_text(path)}: cannot read it ({exc.strerror or exc})") from None
    text = raw.decode("utf-8", "surrogateescape")  # file names are bytes; the rest of cxrad keeps them so
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        column = next((c for c in ("path", "file", "filename", "image") if rows and c in rows[0]), None)
        if column is None:
            raise UserError(f"--files-from {path_text(path)}: a CSV list needs a 'path' (or 'file') column")
        lines = [row[column] or "" for row in rows]
    else:
        lines = [line for line in text.splitlines() if not line.strip().startswith("#")]
    names = [line.strip() for line in lines if line.strip()]
    return [p if os.path.isabs(p) else str(path.parent / p) for p in names]


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def model_streams(det, threads: int | None = None) -> int:
    """How many batches the model scores at once, each on one torch thread: ``threads`` (None: one per core).
    One on a GPU, which runs batches in turn anyway."""
    return 1 if not on_cpu(det) else max(1, int(threads or available_cpus()))


def on_cpu(det) -> bool:
    """True when ``det`` scores on the CPU (an ONNX export always does)."""
    if not hasattr(det, "scoring_graph"):
        return True
    from cxrad.detectors.graph import graph_device
    return graph_device(det.scoring_graph()).type == "cpu"


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


#: batches queued for the model beyond one per stream, so that no stream waits while the caller writes rows
SPARE_BATCHES = 1


def score_stream(det, files: list[str], batch_size: int = 64, workers: int = 2, cache_dir=None,
                 threads: int | None = None, pictures: tuple[str, ...] = (),
                 on_pictures=None) -> Iterator[pd.DataFrame]:
    """Score ``files`` in batches and yield each batch's score table (error rows included, in input order), in
    the order of ``files``. Decoding (``workers`` threads) runs ahead of the model, which scores
    ``model_streams(det, threads)`` batches at once on one torch thread each: independent one-thread batches
    keep every core busy, where one batch on several threads has them wait on each other at every layer (and
    far longer when other jobs hold a core). With ``pictures`` (e.g. ``("map",)``), each batch's pictures come
    from the same forward pass and go to ``on_pictures(images, table, pictures)``."""
    chunks = iter([files[i:i + batch_size] for i in range(0, len(files), batch_size)])
    streams = model_streams(det, threads)
    torch_on_cpu = on_cpu(det) and hasattr(det, "scoring_graph")  # (an ONNX export runs without torch)

    def load(chunk):
        return load_images(chunk, det.prep, cache_dir=cache_dir, workers=workers, cache_set=False)

    def run(images):
        return det.explain(images, pictures=pictures) if pictures else (det.score(images), {})

    with torch_threads(1 if torch_on_cpu else None), \
            ThreadPoolExecutor(1, thread_name_prefix="cxrad-decode") as decoder, \
            ThreadPoolExecutor(streams, thread_name_prefix="cxrad-model",
                               initializer=one_torch_thread if torch_on_cpu else None) as model:
        decoding = collections.deque(decoder.submit(load, c)
                                     for c in itertools.islice(chunks, streams + 1 + SPARE_BATCHES))
        scoring: collections.deque = collections.deque()
        while decoding or scoring:
            while decoding and len(scoring) < streams + SPARE_BATCHES:
                images = decoding.popleft().result()
                following = next(chunks, None)
                if following is not None:
                    decoding.append(decoder.submit(load, following))
                scoring.append((images, model.submit(run, images)))
            images, future = scoring.popleft()
            table, drawn = future.result()
            if pictures:
                on_pictures(images, table, drawn)
            yield table


def one_torch_thread() -> None:
    """A model thread's setting: torch's thread count is kept per thread (its OpenMP pool), so each sets it."""
    import torch
    torch.set_num_threads(1)


@dataclass
class ScoreSummary:
    """What a streamed scoring run produced: counts over every row (earlier runs' included when resuming)
    and the first rows, for a terminal; the rows themselves are in the output files."""

    rows: int = 0
    errors: int = 0
    anomalous: int = 0
    head: pd.DataFrame | None = None


#: text columns of a score file (read back as text, whatever they hold: a file named 001 stays '001')
TEXT_COLUMNS = ("path", "error", "finding", "source")


def _read_rows(text: str) -> pd.DataFrame:
    frame = pd.read_csv(io.StringIO(text, newline=""), keep_default_na=False,
                        na_values={"score": [""], "percentile": [""]}, dtype={c: str for c in TEXT_COLUMNS})
    for col in TEXT_COLUMNS:
        if col in frame:
            frame[col] = frame[col].map(restore_cell)
    return frame


def read_scores(csv_path) -> pd.DataFrame:
    """A score file as written: empty score and verdict cells of error rows stay missing, text columns stay
    text (a file named ``001`` is '001', not 1) and cells neutralised against formulas read back as they were."""
    try:
        raw = read_regular_file(csv_path, sys.maxsize)
    except UnsafeFileError as exc:
        raise UserError(f"{path_text(csv_path)}: {exc}") from None
    return _read_rows(raw.decode("utf-8"))


def _complete_records(text: str, width: int) -> list[list[str]]:
    """The records of a CSV text up to the first incomplete one (a kill can cut the last write anywhere, even
    inside a quoted file name that holds a line break)."""
    records, reader = [], csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for record in reader:
            records.append(record)
    except csv.Error:
        pass
    if records and not text.endswith("\n"):
        records.pop()  # the last write was cut off
    return [r for r in records[:1]] + [r for r in records[1:] if len(r) == width]


def _resume(csv_path: Path, jsonl_path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The rows a killed run finished. Both files are rewritten from the CSV's complete rows (a partial last
    row is dropped), so they hold the same rows before appending resumes. A scores.csv that is not a regular
    file (a symlink, a FIFO, a device) or not a score file of ``columns`` is refused, never read."""
    try:
        st = os.lstat(csv_path)
    except FileNotFoundError:
        jsonl_path.unlink(missing_ok=True)
        return pd.DataFrame()
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"--resume: {path_text(csv_path)} is not a regular file (a symlink, pipe or device); "
                        "score into a new folder")
    try:
        text = read_regular_file(csv_path, sys.maxsize).decode("utf-8")
    except (UnsafeFileError, UnicodeDecodeError) as exc:
        raise UserError(f"--resume: cannot read {path_text(csv_path)} ({exc})") from None
    if not text.strip():
        jsonl_path.unlink(missing_ok=True)
        csv_path.unlink()
        return pd.DataFrame()
    head = next(csv.reader(io.StringIO(text, newline="")), [])
    wanted = columns or head
    if head != wanted or not {"path", "error"} <= set(head):
        raise UserError(f"--resume: {path_text(csv_path)} is not a score file of this model (its columns: "
                        f"{', '.join(head)[:200] or 'none'}; expected {', '.join(wanted)}); score into a new folder")
    records = _complete_records(text, len(head))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    lines = []
    for record in records:
        writer.writerow(record)
        lines.append(buf.getvalue()[:-2] + "\n")
        buf.seek(0)
        buf.truncate()
    kept = "".join(lines)
    done = _read_rows(kept)
    if kept != text:
        atomic_write_text(csv_path, kept)
    atomic_write_text(jsonl_path, json_lines(done))
    return done


def run_record(det) -> dict:
    """What identifies the scores a detector gives: its kind, weights, held-out normal scores and active
    threshold. Written to OUT/scored-with.json; ``--resume`` refuses to mix in rows of another."""
    normal = np.ascontiguousarray(np.asarray(getattr(det, "normal_scores_", []), np.float64))
    return {"kind": str(getattr(det, "kind", "")), "model": getattr(det, "source_", None),
            "weights_sha256": getattr(det, "weights_sha256_", None),
            "normal_scores_sha256": hashlib.sha256(normal.tobytes()).hexdigest(),
            "threshold_rule": str(getattr(det, "threshold_rule_", "")), "threshold": float(det.threshold_),
            "components": list(getattr(det, "components", ()))}


_SAME_MODEL_KEYS = ("kind", "weights_sha256", "normal_scores_sha256", "components")


def _check_run_record(out: Path, record: dict, resume: bool) -> None:
    path = out / RUN_RECORD
    if resume and os.path.lexists(path):
        try:
            old = json.loads(read_regular_file(path, MAX_RUN_RECORD_BYTES).decode("utf-8"))
            if not isinstance(old, dict):
                raise ValueError("not a mapping")
        except (UnsafeFileError, ValueError) as exc:
            raise UserError(f"--resume: {path_text(path)} is unreadable ({exc}); score into a new folder") from None
        if any(old.get(k) != record[k] for k in _SAME_MODEL_KEYS):
            raise UserError(f"--resume: {path_text(out)} was scored with another model ({old.get('model') or old.get('kind')}, "
                            f"weights {str(old.get('weights_sha256'))[:12]}); give that --model or score into a new "
                            "folder")
        if (old.get("threshold_rule"), old.get("threshold")) != (record["threshold_rule"], record["threshold"]):
            raise UserError(f"--resume: {path_text(out)} was scored at another operating point ({old.get('threshold_rule')} "
                            f"{old.get('threshold')}, now {record['threshold_rule']} {record['threshold']}); give the "
                            "same one or score into a new folder")
    atomic_write_text(path, json.dumps(record, indent=1))  # (a rename: replaces a planted symlink, not its target)


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


@contextlib.contextmanager
def output_lock(out: Path):
    """An exclusive lock on an output folder for the whole run: a second run into the same folder is refused at
    once (two writers would interleave and delete each other's rows)."""
    try:
        with folder_lock(out, wait=False):
            yield
    except FolderBusyError:
        raise UserError(f"--out {path_text(out)} is being written by another cxrad run; wait for it to finish or "
                        "choose another folder") from None


def score_to_files(det, files: list[str], out=None, resume: bool = False, batch_size: int = 64, workers: int = 2,
                   cache_dir=None, progress: bool = False, threads: int | None = None, on_batch=None,
                   head: int = 200, pictures: tuple[str, ...] = (), on_pictures=None) -> ScoreSummary:
    """Stream the scores of ``files`` into ``out``/scores.csv and scores.jsonl (nothing is written when ``out``
    is None), appending batch by batch, each write flushed to disk; ``on_batch(rows)`` sees every batch (and
    ``on_pictures`` the ``pictures`` of each, as in ``score_stream``). With
    ``resume``, files already in scores.csv are skipped (refused if the folder was scored with another model or
    operating point). The folder is locked for the run. Only counts and the first ``head`` rows stay in memory.
    Paths are written as ``files.path_text`` gives them (a name that is not UTF-8 shows its bytes as \\xNN)."""
    with contextlib.ExitStack() as stack:
        if out is not None:
            out = Path(out)
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(output_lock(out))
        return _score_to_files(det, files, out, resume, batch_size, workers, cache_dir, progress, threads,
                               on_batch, head, pictures, on_pictures)


def expected_columns(det) -> list[str]:
    return ["path", "score", *det.components, "percentile", "anomalous", "error"]


def _score_to_files(det, files, out, resume, batch_size, workers, cache_dir, progress, threads, on_batch,
                    head, pictures, on_pictures) -> ScoreSummary:
    summary = ScoreSummary()
    csv_path = jsonl_path = None
    done = set()
    if out is not None:
        csv_path, jsonl_path = out / "scores.csv", out / "scores.jsonl"
        _check_run_record(out, run_record(det), resume)
        if resume:
            finished = _resume(csv_path, jsonl_path, expected_columns(det))
            if len(finished):
                done = set(finished["path"])
                _count(summary, finished, head)
        else:
            for p in (csv_path, jsonl_path):
                p.unlink(missing_ok=True)
    todo = [f for f in files if path_text(f) not in done]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(files), initial=len(files) - len(todo), unit="img", desc="scoring")
    columns = None
    for table in score_stream(det, todo, batch_size, workers, cache_dir, threads, pictures, on_pictures):
        columns = columns or score_columns(table, det.components)
        rows = table[columns].copy()
        rows["path"] = rows["path"].map(path_text)
        if csv_path is not None:
            _append(csv_path, csv_text(rows, header=not os.path.lexists(csv_path) or csv_path.stat().st_size == 0))
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
    """Append and flush to disk; never through a symlink (one planted as scores.csv cannot redirect rows)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o666)
    with os.fdopen(fd, "wb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UserError(f"{path_text(path)} is not a regular file")
        fh.write(text.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
