"""Fuzz benchmark: `cxrad score` on N generated bad, odd and hostile files (default 10,000), its peak memory and
speed, and whether every file became a score row or an error row with a reason.

    python benchmarks/fuzz.py --n 10000          # writes benchmarks/results/fuzz.md

The files come from tests/fuzz/generate.py (made from kermany224 and nih_cxr14_talo images in a scratch
folder, deleted afterwards; nothing is committed). A tiny DAE is trained first (32 px: the model's cost is not
what is measured). The scorer runs in a subprocess with a timeout; its peak RSS is the largest resident set the
kernel recorded for it (getrusage of the child). Pass: no hang, no traceback, every invariant of
generate.check_table, peak RSS under --max-rss-gib.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("fuzz_generate", ROOT / "tests" / "fuzz" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def train_model(folder: Path, data: Path) -> Path:
    from cxrad.detectors import DAEDetector

    files = sorted(str(p) for p in (data / "kermany224" / "train" / "NORMAL").glob("*.jpeg"))[:40]
    det = DAEDetector(image_size=32, width=8, depth=2, epochs=1, batch_size=16, device="cpu", seed=0,
                      cache_dir=str(folder / "train_cache"))
    return det.fit(files).save(folder / "model")


def reason_group(reason: str) -> str:
    """An error reason without its numbers and quoted values, to count reasons by kind."""
    reason = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason)
    reason = re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "N", reason)
    return reason[:110]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="generated files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=os.environ.get("CXRAD_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--workers", type=int, default=2, help="decoding threads of cxrad score (its default)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before the scorer counts as hung")
    ap.add_argument("--max-rss-gib", type=float, default=1.5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--keep", help="keep the generated files and outputs in this folder")
    args = ap.parse_args(argv)

    gen = load_generator()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cxrad-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        cases = gen.generate(work / "files", args.n, seed=args.seed, data=Path(args.data))
        cases += gen.special_files(work / "files" / "special")
        t_gen = time.perf_counter() - t0
        disk = sum(c.path.stat().st_size for c in cases if c.path.is_file() and not c.path.is_symlink())
        model = train_model(work, Path(args.data))

        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONWARNINGS="ignore", CXRAD_CACHE=str(work / "cache"))
        cmd = [sys.executable, "-m", "cxrad", "score", str(work / "files"), "--model", str(model), "--out",
               str(work / "out"), "--device", "cpu", "--quiet", "--workers", str(args.workers), "--batch-size",
               str(args.batch_size)]
        t0 = time.perf_counter()
        hung = False
        with open(work / "stderr.txt", "w") as err, open(work / "stdout.txt", "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
            try:
                rc = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc, hung = proc.wait(), True
        t_score = time.perf_counter() - t0
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
        stderr = (work / "stderr.txt").read_text(errors="replace")
        tracebacks = stderr.count("Traceback") + (work / "stdout.txt").read_text(errors="replace").count("Traceback")

        import pandas as pd
        csv = work / "out" / "scores.csv"
        table = pd.read_csv(csv, keep_default_na=False, na_values={"score": [""]}) if csv.exists() else \
            pd.DataFrame(columns=["path", "score", "error"])
        outcome, problems = gen.check_table(table, cases)
        reasons = collections.Counter(reason_group(e) for e in table["error"] if isinstance(e, str) and e)
        ok = not hung and rc == 3 and tracebacks == 0 and not problems and peak_gib < args.max_rss_gib
        write_report(Path(args.out) / "fuzz.md", args, cases, outcome, reasons, problems, dict(
            rc=rc, hung=hung, tracebacks=tracebacks, t_gen=t_gen, t_score=t_score, peak_gib=peak_gib, rows=len(table),
            disk=disk, ok=ok))
        print(f"{'PASS' if ok else 'FAIL'}: {len(cases)} files, {len(table)} rows, peak RSS {peak_gib:.2f} GiB, "
              f"{t_score:.0f} s, {len(problems)} problems, {tracebacks} tracebacks, hung={hung}")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def write_report(path: Path, args, cases, outcome, reasons, problems, r: dict) -> None:
    kinds = collections.Counter(c.kind for c in cases)
    expect = {c.kind: c.expect for c in cases}
    n_scored = sum(v for (k, got), v in outcome.items() if got == "score")
    lines = [
        f"# Fuzz benchmark: `cxrad score` on {len(cases):,} hostile files",
        "",
        f"**{'PASS' if r['ok'] else 'FAIL'}**: {r['rows']:,} rows for {len(cases):,} files "
        f"({n_scored:,} scored, {r['rows'] - n_scored:,} error rows with a reason), "
        f"{r['tracebacks']} tracebacks, {'a hang (killed after the timeout)' if r['hung'] else 'no hang'}, "
        f"{len(problems)} broken invariants, exit code {r['rc']} (3: some files could not be scored).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| peak RSS of the scoring process | {r['peak_gib']:.2f} GiB (limit {args.max_rss_gib} GiB) |",
        f"| scoring wall time | {r['t_score']:.0f} s ({len(cases) / max(r['t_score'], 1e-9):.0f} files/s) |",
        f"| generating the files | {r['t_gen']:.0f} s, {r['disk'] / 2**20:.0f} MiB on disk |",
        f"| decoding threads, batch size | {args.workers}, {args.batch_size} |",
        f"| machine | {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (load average at the end: "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}), Python {platform.python_version()} |",
        "",
        f"Command: `python benchmarks/fuzz.py --n {args.n} --seed {args.seed} --workers {args.workers}` "
        "(files from tests/fuzz/generate.py, made in a scratch folder and deleted; the model is a 32 px DAE "
        "trained for the run). Every kind is described in generate.py; `expect` is what the scorer must give "
        "(score: a valid image; error: must never get a score; any: truncated or bit-flipped files, either).",
        "",
        "| kind | files | expect | scored | error rows |",
        "|---|---|---|---|---|",
    ]
    for kind in sorted(kinds, key=lambda k: (-kinds[k], k)):
        lines.append(f"| {kind} | {kinds[kind]} | {expect[kind]} | {outcome[(kind, 'score')]} | "
                     f"{outcome[(kind, 'error')]} |")
    lines += ["", f"Error reasons ({len(reasons)} kinds, numbers and quoted values replaced; most frequent 40):",
              "", "| rows | reason |", "|---|---|"]
    lines += [f"| {n} | {reason.replace('|', '/')} |" for reason, n in reasons.most_common(40)]
    if problems:
        lines += ["", "Broken invariants (first 50):", ""] + [f"- {p}" for p in problems[:50]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
