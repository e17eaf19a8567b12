"""Streaming scoring speed and memory: each stage alone, then end to end, on the same files in the same run.

    python benchmarks/scoring_speed.py                       # everything (~30-40 min on 2 shared cores)
    python benchmarks/scoring_speed.py --png 300 --rss 300 3000 --repeats 1   # a quick look

For the shipped default model (a 64 px DAE) on two sets:

* ``kermany224`` - the publisher's test split, 624 JPEGs at 224 px (shared data folder);
* ``png1024`` - N distinct 1024 px PNGs made from the 30 ``nih_cxr14_fullres`` images by flipping, shifting and
  stamping an index into the corner (distinct content: the preprocessing cache keys on the file's hash).

It measures, interleaved over ``--repeats`` rounds so that a change in the machine's load hits every
measurement alike: (a) reading + decoding + resizing the files alone (the scorer's reader, its decoding
threads, no cache), (b) the detector's ``score_arrays`` on the preloaded 64 px arrays, (c) ``score_to_files``
end to end with an empty cache (cold) and again with the filled cache (warm), and ``cxrad score`` as a command.
Peak RSS of ``cxrad score`` on K and 10*K distinct files is measured in child processes. Start-up: ``cxrad
--help``/``--version``/an argument error against ``import torch``, and a one-image ``cxrad score``. With
onnxruntime installed, the exported default model is timed against PyTorch on the same arrays.

Wall time is what a user waits; CPU time (this process, all threads) is steadier on a machine shared with
other jobs. Writes OUT/scoring_speed.md and OUT/scoring_speed.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import git_commit, score_per_core
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CXRAD_DATA", ROOT.parent / "shared" / "data"))


# ------------------------------------------------------------------------------------------------ data
def variant(grey: np.ndarray, index: int) -> np.ndarray:
    """A distinct copy of ``grey``: mirrored or not, shifted by a few pixels, ``index`` stamped in row 0."""
    out = grey[:, ::-1] if index % 2 else grey
    dy, dx = ((index // 2) % 7 - 3) * 2, ((index // 14) % 7 - 3) * 2
    out = np.roll(out, (dy, dx), axis=(0, 1)).copy()
    bits = np.array([(index >> b) & 1 for b in range(24)], np.uint8) * 255
    out[0, :24] = bits
    out[1, :24] = bits  # two rows, so that JPEG keeps the stamp distinct
    return out


def make_variants(sources: list[Path], n: int, folder: Path, suffix: str) -> list[str]:
    """``n`` distinct images written to ``folder`` (PNG level 1: fast to write, as fast to decode as level 6)."""
    folder.mkdir(parents=True, exist_ok=True)
    greys = [np.asarray(Image.open(p).convert("L")) for p in sources]

    def write(i: int) -> str:
        path = folder / f"v{i:05d}{suffix}"
        img = Image.fromarray(variant(greys[i % len(greys)], i))
        if suffix == ".png":
            img.save(path, compress_level=1)
        else:
            img.save(path, quality=95)
        return str(path)

    with ThreadPoolExecutor(2) as pool:
        files = list(pool.map(write, range(n)))
    digests = {hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files}
    if len(digests) != n:
        raise SystemExit(f"only {len(digests)} of {n} generated files are distinct")
    return files


# --------------------------------------------------------------------------------------------- timing
def timed(fn) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process, all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def child_env() -> dict:
    """Children run this checkout's cxrad, whatever the virtual environment has installed."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}


RUSAGE_WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(json.dumps({"rc": rc.returncode, "wall": time.perf_counter() - t, "stderr": rc.stderr[-2000:],
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_child(cmd: list[str]) -> dict:
    """Run ``cmd``; its wall time and peak RSS (a wrapper process measures its only child)."""
    r = subprocess.run([sys.executable, "-c", RUSAGE_WRAPPER, *cmd], capture_output=True, text=True,
                       env=child_env())
    return json.loads(r.stdout.strip().splitlines()[-1])


def cxrad_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "cxrad", *map(str, args)]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    return {"cpu": cpu, "cores": os.cpu_count(), "available_cores": len(os.sched_getaffinity(0)),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average": [round(v, 1) for v in os.getloadavg()]}


# ------------------------------------------------------------------------------------------- measures
def stage_round(det, files: list[str], images: np.ndarray, scratch: Path, workers: int, tag: str) -> dict:
    """One interleaved round on one set: (a) reader alone, (b) model alone, (c) end to end cold then warm."""
    from cxrad.data import load_images
    from cxrad.serving.streaming import available_cpus, score_to_files, torch_threads

    n, batch = len(files), 64
    chunks = [files[i:i + batch] for i in range(0, n, batch)]
    out = {}
    _, wall, cpu = timed(lambda: [load_images(c, det.prep, cache_dir=None, workers=workers) for c in chunks])
    out["a_decode"] = {"wall": wall, "cpu": cpu}
    with torch_threads(1):  # as the scorer runs the model: a batch per core at once, 1 thread each
        _, wall, cpu = timed(lambda: score_per_core(det, images, available_cpus(), batch))
    out["b_model"] = {"wall": wall, "cpu": cpu, "threads": available_cpus()}
    cache = Path(tempfile.mkdtemp(dir=scratch, prefix=f"cache-{tag}-"))
    for run in ("c_cold", "c_warm"):
        dest = Path(tempfile.mkdtemp(dir=scratch, prefix=f"out-{tag}-"))
        summary, wall, cpu = timed(lambda: score_to_files(det, files, dest, batch_size=batch, workers=workers,
                                                          cache_dir=cache))
        assert summary.rows == n and summary.errors == 0, summary.head["error"].unique()[:3]
        out[run] = {"wall": wall, "cpu": cpu}
        shutil.rmtree(dest)
    shutil.rmtree(cache)
    return out


def hash_cost(files: list[str]) -> dict:
    from cxrad.data import file_hash
    _, wall, cpu = timed(lambda: [file_hash(f) for f in files])
    return {"wall": wall, "cpu": cpu, "mb": sum(os.path.getsize(f) for f in files) / 1e6}


def default_threads_model(det, images: np.ndarray) -> dict:
    """The model alone with torch's own thread count (one per core), for comparison."""
    _, wall, cpu = timed(lambda: det.score_arrays(images))
    import torch
    return {"wall": wall, "cpu": cpu, "threads": torch.get_num_threads()}


def fast_start(image: str, scratch: Path, repeats: int) -> dict:
    cmds = {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "python -c 'import cxrad'": [sys.executable, "-c", "import cxrad"],
        "cxrad --help": cxrad_cmd("--help"),
        "cxrad --version": cxrad_cmd("--version"),
        "cxrad score (no images: error)": cxrad_cmd("score"),
        "cxrad score --batch-size x (argparse error)": cxrad_cmd("score", "x.png", "--batch-size", "x"),
        "cxrad score ONE_IMAGE (default model)": cxrad_cmd("score", image, "--quiet", "--cache-dir",
                                                           scratch / "one-image-cache"),
    }
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(repeats):  # interleaved, so that load changes hit every command alike
        for name, cmd in cmds.items():
            walls[name].append(run_child(cmd)["wall"])
    return {k: {"median": statistics.median(v), "all": v} for k, v in walls.items()}


def onnx_speed(det, images: np.ndarray, scratch: Path, repeats: int) -> dict | None:
    try:
        import onnxruntime  # noqa: F401

        from cxrad.serving.onnx_export import OnnxScorer, export_onnx
    except ImportError:
        return None
    from cxrad.serving.streaming import torch_threads
    path, _ = export_onnx(det, scratch / "onnx")
    scorers = {1: OnnxScorer(path, threads=1), 0: OnnxScorer(path)}
    expected = det.score_arrays(images)["score"]
    diff = float(np.max(np.abs(scorers[1].score_arrays(images)["score"] - expected)))
    res = {"max_abs_diff": diff, "rows": {}}
    for _ in range(repeats):
        for threads in (1, 0):
            label = "1 thread" if threads else f"default threads ({os.cpu_count()} cores)"
            with torch_threads(threads or None):
                _, wall, cpu = timed(lambda: det.score_arrays(images))
            res["rows"].setdefault(f"PyTorch, {label}", []).append({"wall": wall, "cpu": cpu})
            _, wall, cpu = timed(lambda: scorers[threads].score_arrays(images))
            res["rows"].setdefault(f"onnxruntime, {label}", []).append({"wall": wall, "cpu": cpu})
    return res


# ---------------------------------------------------------------------------------------------- report
def _yes(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(rep: dict, args) -> str:
    m, sets = rep["machine"], rep["sets"]
    lines = [
        "# Scoring speed and memory",
        "",
        f"Written by `benchmarks/scoring_speed.py` on {rep['date']} at commit {rep['commit']} (one run; rerun to "
        "update):",
        "",
        "```bash",
        "PYTHONPATH=src python benchmarks/scoring_speed.py " + " ".join(rep["argv"]),
        "```",
        "",
        f"Machine: {m['cpu']}, {m['available_cores']} cores available ({m['cores']} in the machine), "
        f"{m['memory_gib']} GiB; Python {m['python']}, torch {m['torch']} (CPU). **Shared**: other jobs (model "
        f"training) ran on the same cores throughout; load average {m['load_average']} at the start and "
        f"{rep['machine_end']['load_average']} at the end. Wall times on a shared machine move with the other "
        f"jobs, so every stage was measured in each of {args.repeats} interleaved rounds (medians below, the "
        "range in brackets); CPU time (this process, all threads) is the steadier measure of work.",
        "",
        f"Model: the shipped default `{rep['model']}` (64 px U-Net DAE). Scorer settings: `cxrad score`'s defaults "
        f"(batch 64, {rep['workers']} decoding threads, the model scoring {sets[0]['model_threads']} batches "
        "at once, 1 thread each).",
        "",
        "## Each stage alone and end to end",
        "",
        "(a) `load_images` of the files alone (read, SHA-256 for the cache key, decode, resize; no cache), "
        "(b) `det.score_arrays` on the preloaded 64 px arrays, (c) `scoring.score_to_files` (decoding one "
        "batch ahead of the model, rows appended to scores.csv/jsonl) with an empty cache, then again with the "
        "filled one. Images per second, median [range]; CPU milliseconds per image.",
        "",
        "| set | (a) decode alone | (b) model alone | (c) end to end, cold cache | (c) warm cache | "
        "limit when both stages share the cores, 1/(1/a+1/b) |",
        "|---|---|---|---|---|---|",
    ]
    for st in sets:
        cell = {k: f"{st[v]:.0f} [{min(st['spread'][k]):.0f}-{max(st['spread'][k]):.0f}] img/s, "
                   f"{st['cpu_ms'][k]:.1f} ms CPU" for k, v in (("a_decode", "a"), ("b_model", "b"),
                                                                ("c_cold", "cold"), ("c_warm", "warm"))}
        lines.append(f"| {st['set']} | {cell['a_decode']} | {cell['b_model']} | {cell['c_cold']} | "
                     f"{cell['c_warm']} | {st['bound']:.0f} img/s |")
    lines += ["", "## Targets", "", "| target | " + " | ".join(st["set"] for st in sets) + " |",
              "|---|" + "---|" * len(sets)]
    lines.append("| end to end (cold) >= 0.8 x the slower of (a) and (b) | " + " | ".join(
        f"{st['cold_vs_slower']:.2f} x: {_yes(st['cold_vs_slower'] >= 0.8)}" for st in sets) + " |")
    lines.append("| end to end (cold) / the shared-core limit 1/(1/a+1/b) | " + " | ".join(
        f"{st['cold_vs_bound']:.2f}" for st in sets) + " |")
    lines.append("| warm-cache rescoring time <= 1.2 x the model's time on preloaded arrays | " + " | ".join(
        f"{st['warm_time_vs_model']:.2f} x: {_yes(st['warm_time_vs_model'] <= 1.2)}" for st in sets) + " |")
    lines.append("| SHA-256 of each file (the warm path's only per-file work besides loading 4 KB) | " + " | ".join(
        f"{st['hash_ms']:.2f} ms/file ({st['hash_mb_per_file']:.2f} MB), {st['hash_ms'] / st['cpu_ms']['b_model']:.0%} "
        "of the model's CPU time" for st in sets) + " |")
    cmds = rep["commands"]
    names = list(cmds)
    small, big = cmds[names[2]], cmds[names[3]]
    ratio = big["maxrss_mib"] / small["maxrss_mib"]
    lines += ["", f"Peak RSS of `cxrad score` on {big['n']:,} files within 10% of {small['n']:,} files, and under "
              f"1 GiB (distinct 224 px JPEGs, medians below): {ratio:.3f} x ({small['maxrss_mib']:.0f} -> "
              f"{big['maxrss_mib']:.0f} MiB): {_yes(ratio <= 1.1 and big['maxrss_mib'] < 1024)}."]
    lines += ["", "## Threads", "",
              "The same (b) one batch at a time on torch's own thread count (one per core) instead of a batch per "
              "core at once:",
              "", "| set | model threads | img/s | CPU ms/img |", "|---|---|---|---|"]
    for st in sets:
        d = st["b_default_threads"]
        lines.append(f"| {st['set']} | 1 each, {st['model_threads']} batches at once (the scorer's) | {st['b']:.0f} | "
                     f"{st['cpu_ms']['b_model']:.1f} |")
        lines.append(f"| {st['set']} | {d['threads']} (torch default) | {d['img_s']:.0f} | {d['cpu_ms']:.1f} |")
    lines += ["", "## `cxrad score` as a command: throughput and peak RSS", "",
              "Each run is a fresh process (start-up and model loading included) with an empty cache; peak RSS is "
              "the child's `ru_maxrss`. The JPEG variants are distinct files (flipped, shifted, index stamped) made "
              f"from the kermany224 test images; the {small['n']:,}-file set is the first {small['n']:,} of the "
              f"{big['n']:,}. Median of "
              f"{args.rss_repeats} interleaved runs; every run's peak in brackets (RSS swings by ~100 MiB within each "
              "batch, decoding plus the network's activations, so the peak is the highest swing, not a trend).", "",
              "| files | wall s | img/s | peak RSS (MiB) |", "|---|---|---|---|"]
    for name, r in cmds.items():
        every = ", ".join(f"{v:.0f}" for v in r["maxrss_all"])
        lines.append(f"| {name} | {r['wall']:.1f} | {r['img_s']:.0f} | {r['maxrss_mib']:.0f} [{every}] |")
    fs = rep["fast_start"]
    torch_s = fs["python -c 'import torch'"]["median"]
    lines += ["", "## Start-up", "", f"Median wall time of {len(next(iter(fs.values()))['all'])} interleaved runs "
              "each (fresh interpreters). Target: help, version and argument errors under 0.3 x `import torch`; "
              "one image costs little more than `import torch` plus the work.", "",
              "| command | seconds | x import torch |", "|---|---|---|"]
    for name, v in fs.items():
        lines.append(f"| `{name}` | {v['median']:.2f} | {v['median'] / torch_s:.2f} |")
    if rep.get("onnx"):
        o = rep["onnx"]
        n = sets[0]["n"]
        lines += ["", "## onnxruntime vs PyTorch (CPU)", "",
                  f"The default model exported with `cxrad export` (graph: percentile scaling, U-Net, median filter, "
                  f"box mean) against `det.score_arrays`, on the {n} preloaded kermany224 arrays; largest score "
                  f"difference {o['max_abs_diff']:.1g}. Median of {args.repeats} interleaved rounds.", "",
                  "| engine | img/s | CPU ms/img |", "|---|---|---|"]
        for name, runs in o["rows"].items():
            wall = statistics.median(r["wall"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            lines.append(f"| {name} | {n / wall:.0f} | {1000 * cpu / n:.1f} |")
    lines += ["", "## Reading the numbers", ""]
    for st in sets:
        slower = "decoding" if st["a"] < st["b"] else "the model"
        lines.append(f"- **{st['set']}**: the slower stage alone is {slower} ({min(st['a'], st['b']):.0f} img/s). "
                     f"Both stages are CPU work on the same cores, so end to end cannot beat 1/(1/a+1/b) = "
                     f"{st['bound']:.0f} img/s unless cores sit idle while a stage runs alone; the scorer reaches "
                     f"{st['cold_vs_bound']:.0%} of that limit and {st['cold_vs_slower']:.0%} of the slower stage.")
    lines.append("- 0.8 x the slower stage is reachable only when one stage costs at most a quarter of the other "
                 "(1/(1/a+1/b) >= 0.8 min(a, b) needs max/min >= 4) or when there are idle cores for the "
                 "pipeline to overlap the stages: neither holds for 1024 px PNGs on 2 shared cores, where a PNG "
                 "decode (zlib inflate + unfiltering in Pillow, ~9 ms) costs about as much CPU as the model.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main
def median_of(rounds: list[dict], stage: str, key: str = "wall") -> float:
    return statistics.median(r[stage][key] for r in rounds)


def summarise_set(name: str, n: int, rounds: list[dict], hashing: dict | None, default_model: dict) -> dict:
    a, b = n / median_of(rounds, "a_decode"), n / median_of(rounds, "b_model")
    cold, warm = n / median_of(rounds, "c_cold"), n / median_of(rounds, "c_warm")
    bound = 1 / (1 / a + 1 / b)  # both stages on the same cores, none idle
    out = {"set": name, "n": n, "a": a, "b": b, "cold": cold, "warm": warm, "bound": bound,
           "cold_vs_slower": cold / min(a, b), "cold_vs_bound": cold / bound,
           "warm_time_vs_model": median_of(rounds, "c_warm") / median_of(rounds, "b_model"),
           "cpu_ms": {s: 1000 * median_of(rounds, s, "cpu") / n for s in ("a_decode", "b_model", "c_cold", "c_warm")},
           "spread": {s: [n / r[s]["wall"] for r in rounds] for s in ("a_decode", "b_model", "c_cold", "c_warm")},
           "model_threads": rounds[0]["b_model"]["threads"],
           "b_default_threads": {"img_s": n / default_model["wall"], "cpu_ms": 1000 * default_model["cpu"] / n,
                                 "threads": default_model["threads"]}}
    if hashing:
        out["hash_ms"] = 1000 * hashing["wall"] / n
        out["hash_mb_per_file"] = hashing["mb"] / n
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--png", type=int, default=1000, help="distinct 1024 px PNGs to make (1000)")
    ap.add_argument("--rss", type=int, nargs=2, default=[1000, 10000], metavar=("K", "TEN_K"),
                    help="files scored by the two peak-RSS runs (1000 10000)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the stage measurements (3)")
    ap.add_argument("--rss-repeats", type=int, default=2, help="interleaved rounds of the command runs (2)")
    ap.add_argument("--workers", type=int, default=2, help="decoding threads, as cxrad score's default (2)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    import torch

    from cxrad.data import load_images
    from cxrad.bundles import default_name
    from cxrad.detectors import load_detector

    start = machine()
    det = load_detector(None, device="cpu")
    kermany = sorted(str(p) for p in (DATA / "kermany224" / "test").rglob("*.jpeg"))
    commit = git_commit(ROOT) or "unknown"
    report: dict = {"machine": start, "model": default_name(), "argv": sys.argv[1:], "workers": args.workers,
                    "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="cxrad-bench-") as tmp:
        scratch = Path(tmp)
        print(f"making {args.png} PNGs and {args.rss[1]} JPEGs", file=sys.stderr)
        pngs = make_variants(sorted((DATA / "nih_cxr14_fullres").rglob("*.png")), args.png, scratch / "png1024",
                             ".png")
        jpegs = make_variants([Path(p) for p in kermany], args.rss[1], scratch / "jpeg224-big", ".jpeg")
        (scratch / "jpeg224-small").mkdir()
        for f in jpegs[:args.rss[0]]:
            os.link(f, scratch / "jpeg224-small" / Path(f).name)
        sets = {"kermany224 test (624 JPEG, 224 px)": kermany, f"png1024 ({args.png} PNG, 1024 px)": pngs}
        arrays = {k: np.asarray(load_images(v, det.prep, workers=args.workers).images) for k, v in sets.items()}

        rounds: dict[str, list] = {k: [] for k in sets}
        for r in range(args.repeats):
            for i, (name, files) in enumerate(sets.items()):
                print(f"round {r + 1}/{args.repeats}: {name}", file=sys.stderr)
                rounds[name].append(stage_round(det, files, arrays[name], scratch, args.workers, f"{r}{i}"))
        default_model = {k: default_threads_model(det, arrays[k]) for k in sets}
        report["sets"] = [summarise_set(k, len(v), rounds[k], hash_cost(v), default_model[k])
                          for k, v in sets.items()]
        report["rounds"] = rounds

        print("cxrad score as a command, and peak RSS", file=sys.stderr)
        commands = [(f"kermany224 test ({len(kermany)} JPEG, 224 px)", DATA / "kermany224" / "test", len(kermany)),
                    (f"png1024 ({args.png} PNG, 1024 px)", scratch / "png1024", args.png),
                    (f"jpeg224 variants ({args.rss[0]} JPEG)", scratch / "jpeg224-small", args.rss[0]),
                    (f"jpeg224 variants ({args.rss[1]} JPEG)", scratch / "jpeg224-big", args.rss[1])]
        runs: dict[str, list] = {name: [] for name, _, _ in commands}
        for r in range(args.rss_repeats):  # peak RSS is the highest of the per-batch swings: repeat, interleaved
            for i, (name, folder, n) in enumerate(commands):
                res = run_child(cxrad_cmd("score", folder, "--quiet", "--out", scratch / f"cli-{r}{i}",
                                          "--cache-dir", scratch / f"cli-cache-{r}{i}"))
                if res["rc"] != 0:
                    raise SystemExit(f"cxrad score failed on {name}: {res['stderr']}")
                runs[name].append({"n": n, "wall": res["wall"], "maxrss_mib": res["maxrss_mib"]})
                shutil.rmtree(scratch / f"cli-cache-{r}{i}")
        report["commands"] = {name: {"n": v[0]["n"], "wall": statistics.median(x["wall"] for x in v),
                                     "img_s": v[0]["n"] / statistics.median(x["wall"] for x in v),
                                     "maxrss_mib": statistics.median(x["maxrss_mib"] for x in v),
                                     "maxrss_all": [x["maxrss_mib"] for x in v]} for name, v in runs.items()}

        print("start-up", file=sys.stderr)
        report["fast_start"] = fast_start(kermany[0], scratch, args.repeats + 2)
        print("onnxruntime vs PyTorch", file=sys.stderr)
        report["onnx"] = onnx_speed(det, arrays[next(iter(sets))], scratch, args.repeats)
    report["machine_end"] = {"load_average": [round(v, 1) for v in os.getloadavg()]}
    report["torch_threads_default"] = torch.get_num_threads()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scoring_speed.json").write_text(json.dumps(report, indent=1))
    (out / "scoring_speed.md").write_text(render(report, args))
    print(f"wrote {out / 'scoring_speed.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
