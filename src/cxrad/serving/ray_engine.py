"""The streaming scorer on a Ray cluster: Ray Data feeds the file list to a pool of actors, each of which
loads the model once and scores batches; the driver writes the rows shard by shard and merges them.

    score_with_ray("runs/dae", files, "runs/scores", address="auto", actors=32)

Outputs: OUT/scores-00000.csv/.jsonl, one pair per ``shard_size`` input files (written whole, when a
shard's last row arrives; ``resume`` skips the shards already written), then OUT/scores.csv and
OUT/scores.jsonl, the shards concatenated in input order. The model's files travel to the actors through
Ray's object store; the image paths must be readable on every node (a shared filesystem). Each actor takes one
CPU, with one model thread and one decoding thread: add actors to go faster.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from cxrad.bundles import bundle_file_names
from cxrad.data import load_images
from cxrad.errors import UserError
from cxrad.detectors.results import csv_text, json_lines, score_columns
from cxrad.files import atomic_open, atomic_write_text, path_text
from cxrad.bundles import resolve
from cxrad.serving.streaming import output_lock, read_scores

SHARD_NAME = "scores-{:05d}"


class BundleScorer:
    """The Ray actor: the model, loaded once from its files' bytes, scoring pandas batches of paths."""

    def __init__(self, bundle_files: dict[str, bytes], cache_dir: str | None = None, threads: int = 1,
                 operating_point=None):
        import torch

        from cxrad.detectors import load_detector
        torch.set_num_threads(max(1, int(threads)))
        self._folder = tempfile.TemporaryDirectory(prefix="cxrad-model-")
        for name, data in bundle_files.items():
            (Path(self._folder.name) / name).write_bytes(data)
        self.det = load_detector(self._folder.name, device="cpu")  # checks the weights' checksum
        if operating_point is not None:  # the driver's --threshold-value / --target-specificity
            self.det.set_operating_point(operating_point)
        self.cache_dir, self.threads = cache_dir, max(1, int(threads))

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        frame = pd.DataFrame({"path": batch["path"].astype(str).to_numpy(), "label": 0,
                              "row": batch["row"].to_numpy()})
        table = self.det.score(load_images(frame, self.det.prep, cache_dir=self.cache_dir, workers=self.threads,
                                           cache_set=False))
        out = table[score_columns(table, self.det.components)].copy()
        out["row"] = table["row"].astype(np.int64)  # unreadable files keep their manifest columns too
        out["anomalous"] = out["anomalous"].astype(object).where(out["anomalous"].notna(), None)
        return out.sort_values("row", kind="stable")


def bundle_files(path) -> dict[str, bytes]:
    """The bytes of a bundle folder's files (what ``load_detector`` reads)."""
    return {name: (Path(path) / name).read_bytes() for name in bundle_file_names(path)}


def shard_paths(out: Path, shard: int) -> tuple[Path, Path]:
    stem = SHARD_NAME.format(shard)
    return out / f"{stem}.csv", out / f"{stem}.jsonl"


def score_with_ray(model, files: list[str], out, address: str | None = None, actors: int | None = None,
                   batch_size: int = 64, shard_size: int = 10_000, cache_dir=None, resume: bool = False,
                   progress: bool = False, operating_point=None) -> pd.DataFrame:
    """Score ``files`` with ``model`` (a bundle folder or shipped model name) on Ray. ``address``: None starts a
    local Ray (or uses the one this process started), 'auto' joins this machine's cluster, 'ray://host:10001' a
    remote one. ``operating_point`` (a ``thresholds.OperatingPoint``) replaces the bundle's active threshold. Returns the merged
    rows."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'cxrad[ray]'") from None
    if shard_size < 1 or batch_size < 1:
        raise UserError("--shard-size and --batch-size must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):  # one run per output folder
        shards = [files[i:i + shard_size] for i in range(0, len(files), shard_size)]
        plan = {"shard_size": shard_size, "files": len(files),
                "sha256": hashlib.sha256(b"\n".join(map(os.fsencode, files))).hexdigest()}
        plan_path = out / "shards.json"
        if resume and plan_path.exists() and json.loads(plan_path.read_text()) != plan:
            raise UserError(f"--resume: {out} was scored with another file list or --shard-size; score into a new "
                            "folder or give the same files and --shard-size")
        if not resume:
            for old in out.glob("scores-*.*"):
                old.unlink()
        atomic_write_text(plan_path, json.dumps(plan))
        todo = [k for k in range(len(shards)) if not (resume and all(p.exists() for p in shard_paths(out, k)))]
        started = not ray.is_initialized()
        if started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            if todo:
                actor_args = {"bundle_files": bundle_files(resolve(model)), "cache_dir": str(cache_dir) if cache_dir else None,
                              "operating_point": operating_point}
                _run(ray, actor_args, files, shards, todo, out, actors, batch_size, progress)
        finally:
            if started:
                ray.shutdown()
        return merge_shards(out, len(shards))


def _run(ray, actor_args, files, shards, todo, out, actors, batch_size, progress) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows reach the driver in input order
    ctx.enable_progress_bars = progress
    if not progress:  # Ray Data logs each execution's plan at INFO
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    starts = np.cumsum([0] + [len(s) for s in shards])
    items = [{"path": files[i], "row": int(i)} for k in todo for i in range(starts[k], starts[k + 1])]
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # at least one block per actor (fewer and Ray warns that actors stay idle), at most one per file
    blocks = max(1, min(len(items), max(actors, min(len(items) // batch_size, 4 * actors))))
    actors = min(actors, blocks)
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    # a fixed pool of ``actors`` (``concurrency=`` is deprecated in favour of ``compute``)
    scored = ds.map_batches(BundleScorer, fn_constructor_kwargs=actor_args, batch_size=batch_size,
                            batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1)
    shard_of = np.searchsorted(starts, np.arange(len(files)), side="right") - 1
    pending: dict[int, list[pd.DataFrame]] = {}
    for batch in scored.iter_batches(batch_size=None, batch_format="pandas"):
        for k, part in batch.groupby(shard_of[batch["row"].to_numpy()], sort=True):
            pending.setdefault(int(k), []).append(part)
            if sum(len(p) for p in pending[int(k)]) == len(shards[k]):
                _write_shard(out, int(k), pd.concat(pending.pop(int(k))).sort_values("row", kind="stable"))
    if pending:
        raise RuntimeError(f"Ray returned incomplete shards {sorted(pending)}; run again with --resume")


def _write_shard(out: Path, shard: int, rows: pd.DataFrame) -> None:
    rows = rows.drop(columns="row")
    rows["path"] = rows["path"].map(path_text)
    csv_path, jsonl_path = shard_paths(out, shard)
    with atomic_open(jsonl_path) as fh:
        fh.write(json_lines(rows).encode())
    with atomic_open(csv_path) as fh:
        fh.write(csv_text(rows).encode())


def merge_shards(out: Path, n_shards: int) -> pd.DataFrame:
    """OUT/scores.csv and scores.jsonl: the shards in order (streamed, not held in memory)."""
    with atomic_open(out / "scores.csv") as csv_out, atomic_open(out / "scores.jsonl") as jsonl_out:
        for k in range(n_shards):
            csv_path, jsonl_path = shard_paths(out, k)
            with open(csv_path, "rb") as fh:
                header = fh.readline()
                if k == 0:
                    csv_out.write(header)
                while chunk := fh.read(1 << 20):
                    csv_out.write(chunk)
            with open(jsonl_path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    jsonl_out.write(chunk)
    return read_scores(out / "scores.csv")
