"""What several benchmarks share: their result logs (JSON Lines, resumable), the mean ± sd cells of their tables,
and the model alone on preloaded arrays, measured every way it can run."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def git_commit(root: Path) -> str:
    """``git describe --always --dirty`` of the checkout a benchmark ran from (empty outside git)."""
    return subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                          text=True).stdout.strip()


def write_report(out: Path, stem: str, report: dict, lines: list[str]) -> None:
    """OUT/stem.json (the figures) and OUT/stem.md (the table), and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def read_rows(log: Path) -> list[dict]:
    """The rows of a JSON Lines result log (none when it does not exist yet)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def run_resumable(log: Path, jobs, key, run) -> None:
    """``run(*job)`` for each job whose row is not in ``log`` yet (``key(row)`` gives a row's job), appending
    each row as it finishes, so a killed benchmark continues where it stopped. A run that returns None was
    stopped by its time box: exit 75, so that a job queue runs the same command again."""
    done = {key(r) for r in read_rows(log)}
    for job in jobs:
        if job in done:
            continue
        row = run(*job)
        if row is None:
            sys.exit(75)
        with log.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)


def mean_sd(values, count: bool = True) -> str:
    """A table cell: the mean, ± the sample sd when there are two values or more, and (``count``) how many in
    brackets; a dash when there is none (missing and non-finite values are left out)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if not len(v):
        return "—"
    return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "") + (f" ({len(v)})" if count else "")


def score_per_core(det, arrays: np.ndarray, cores: int, batch_size: int = 64) -> None:
    """Score ``arrays`` as the streaming scorer and the node run the model: ``cores`` batches at once, each on
    one torch thread."""
    import torch
    batches = [arrays[i:i + batch_size] for i in range(0, len(arrays), batch_size)]
    with ThreadPoolExecutor(cores, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        list(pool.map(det.score_arrays, batches))


def model_alone_ways(det, arrays: np.ndarray, cores: int, batch_size: int = 64) -> dict:
    """name -> (torch threads, a function scoring all of ``arrays`` in batches): one batch at a time on 1
    thread and on ``cores`` threads, and ``cores`` batches at once on 1 thread each (``score_per_core``)."""
    batches = [arrays[i:i + batch_size] for i in range(0, len(arrays), batch_size)]

    def one_at_a_time():
        for b in batches:
            det.score_arrays(b)
    ways = {"one batch at a time, 1 thread": (1, one_at_a_time)}
    if cores > 1:
        ways[f"one batch at a time, {cores} threads"] = (cores, one_at_a_time)
        ways[f"{cores} batches at once, 1 thread each"] = (1, lambda: score_per_core(det, arrays, cores, batch_size))
    return ways


def time_model_alone(det, arrays: np.ndarray, cores: int, batch_size: int = 64) -> dict[str, dict]:
    """name -> {"img_s", "cpu_ms"} (CPU of this process per image) for each of ``model_alone_ways``."""
    from cxrad.serving.streaming import torch_threads
    out = {}
    for name, (threads, way) in model_alone_ways(det, arrays, cores, batch_size).items():
        with torch_threads(threads):
            det.score_arrays(arrays[:batch_size])  # warm
            t0, c0 = time.perf_counter(), time.process_time()
            way()
            out[name] = {"img_s": len(arrays) / (time.perf_counter() - t0),
                         "cpu_ms": 1000 * (time.process_time() - c0) / len(arrays)}
    return out
