"""`cxrad score` end to end against the model alone on preloaded arrays, by thread setting.

    python benchmarks/score_threads.py                     # all kermany224 JPEGs (5,840), 2 interleaved rounds
    python benchmarks/score_threads.py --limit 1000 --rounds 1

(a) the shipped default model's ``score_arrays`` on the images preloaded at its input size, in batches of 64:
one batch at a time on 1 torch thread, one at a time on one thread per core, and one batch per core at once on
1 thread each (how `cxrad score` runs it); the fastest is the reference. (b) `cxrad score FOLDER --out ...
--cache-dir EMPTY` as a fresh process, by default and with `--threads 1`, and the process's start-up (import
and model load, timed on one file). Rounds are interleaved so that a change in the machine's load hits every
setting alike; the load average is recorded. Writes OUT/score_threads.md and .json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import git_commit, model_alone_ways, time_model_alone, write_report

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CXRAD_DATA", ROOT.parent / "shared" / "data"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="score only the first N JPEGs")
    ap.add_argument("--model", default=None, help="a bundle or shipped name (default: the shipped default model)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--note", default="", help="said of the machine in the table's heading (e.g. what else ran)")
    args = ap.parse_args(argv)

    from cxrad.bundles import default_name
    from cxrad.data import load_images
    from cxrad.detectors import load_detector
    from cxrad.serving.streaming import available_cpus

    cores = available_cpus()
    files = sorted(str(p) for p in DATA.joinpath("kermany224").rglob("*.jpeg"))[:args.limit]
    det = load_detector(args.model, device="cpu")
    model_name = args.model or f"the shipped default, {default_name()}"
    arrays = np.asarray(load_images(files, det.prep, workers=2).images)
    tmp = Path(tempfile.mkdtemp(prefix="cxrad-threads-"))
    folder = tmp / "films"
    folder.mkdir()
    for i, f in enumerate(files):
        os.symlink(f, folder / f"{i:05d}.jpeg")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    settings = {"default (one batch per core at once)": [], "--threads 1": ["--threads", "1"]}
    alone: dict[str, list[float]] = {k: [] for k in model_alone_ways(det, arrays, cores)}
    end_to_end: dict[str, list[float]] = {k: [] for k in settings}
    startup: list[float] = []
    loads = [os.getloadavg()[0]]

    def cxrad_score(inputs, out, extra=()):
        t0 = time.perf_counter()
        model = ["--model", args.model] if args.model else []
        done = subprocess.run([sys.executable, "-m", "cxrad", "score", *inputs, *model, "--quiet", "--out", str(out),
                               "--cache-dir", str(out) + "-cache", *extra], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        return time.perf_counter() - t0
    for r in range(args.rounds):
        for name, measured in time_model_alone(det, arrays, cores).items():
            alone[name].append(measured["img_s"])
        startup.append(cxrad_score([files[0]], tmp / f"one-{r}"))
        for i, (name, extra) in enumerate(settings.items()):
            end_to_end[name].append(len(files) / cxrad_score([str(folder)], tmp / f"out-{r}-{i}", extra))
        loads.append(os.getloadavg()[0])
    best = max(statistics.median(v) for v in alone.values())
    report = {"files": len(files), "model": model_name, "cores": cores, "rounds": args.rounds,
              "load_average_1min": loads,
              "model_alone": alone, "cxrad_score": end_to_end, "best_model_alone": best, "startup_s": startup,
              "command": "PYTHONPATH=src python benchmarks/score_threads.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "commit": git_commit(ROOT)}
    lines = ["# `cxrad score` end to end against the model alone, by thread setting", "",
             f"Written by `benchmarks/score_threads.py` on {report['date']} at commit {report['commit']}:", "",
             "```bash", report["command"], "```", "",
             f"{len(files)} kermany224 JPEGs (224 px), the model {model_name} ({det.kind}, {det.image_size} px), "
             f"{cores} cores; "
             f"1-minute load average {', '.join(f'{v:.1f}' for v in loads)} at the start and after each round"
             f"{'; ' + args.note if args.note else ''}. Images per second, median of {args.rounds} interleaved "
             "round(s) [all rounds].", "",
             "| what | img/s | x best model alone |", "|---|---|---|"]
    for name, v in alone.items():
        lines.append(f"| model alone, preloaded arrays, {name} | {statistics.median(v):.0f} "
                     f"[{', '.join(f'{x:.0f}' for x in v)}] | {statistics.median(v) / best:.2f} |")
    for name, v in end_to_end.items():
        lines.append(f"| `cxrad score` end to end, {name} | {statistics.median(v):.0f} "
                     f"[{', '.join(f'{x:.0f}' for x in v)}] | {statistics.median(v) / best:.2f} |")
    lines += ["", f"Start-up of `cxrad score` (a fresh process scoring one file: imports, model load): "
              f"{statistics.median(startup):.1f} s [{', '.join(f'{x:.1f}' for x in startup)}]; it is part of every "
              "end-to-end figure above."]
    write_report(Path(args.out), "score_threads", report, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
