"""Fuzz benchmark: `cxrad score` on N generated bad, odd and hostile files (default 10,000), its peak memory and
speed at each number of decoding threads, whether every file became a score row or an error row with a reason,
and the hostile situations around the files (issue 21): FIFOs planted in the cache, a second writer on the
output folder, --resume of the finished run, a --files-from FIFO, and altered model.json files and sidecars.

    python benchmarks/fuzz.py --n 10000 --workers 1,2,4     # writes benchmarks/results/fuzz.md

The files come from tests/fuzz/generate.py (made from kermany224, nih_cxr14_talo and dicom_chest files in a
scratch folder, deleted afterwards; nothing is committed). A tiny DAE is trained first (32 px: the model's cost
is not what is measured). Each scorer runs in a subprocess with a timeout and a fresh cache; its peak RSS is the
largest resident set the kernel recorded for that child (wait4). Pass: no hang, no traceback, every invariant
of generate.check_table at every thread count, every situation handled, peak RSS under --max-rss-gib.
"""
from __future__ import annotations

import argparse
import collections
import copy
import hashlib
import importlib.util
import json
import os
import platform
import re
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


def run_scorer(cmd: list[str], env: dict, work: Path, tag: str, timeout: float) -> dict:
    """Run one scorer; its exit code, whether it hung, its wall time and its own peak RSS (wait4)."""
    t0 = time.perf_counter()
    with open(work / f"stderr-{tag}.txt", "w") as err, open(work / f"stdout-{tag}.txt", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        hung, status, usage = False, 0, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                hung = True
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = (work / f"stderr-{tag}.txt").read_text(errors="replace") + \
        (work / f"stdout-{tag}.txt").read_text(errors="replace")
    return {"rc": proc.returncode, "hung": hung, "seconds": time.perf_counter() - t0,
            "peak_gib": usage.ru_maxrss / 2**20, "tracebacks": text.count("Traceback"), "stderr": text}


def plant_cache_fifos(gen, cases, cache: Path, n: int = 5) -> list:
    """FIFOs at the cache entries of ``n`` valid files: a reader that opened them would hang."""
    from cxrad.data import prep_key
    from cxrad.imaging import Preprocessing
    planted = [c for c in cases if c.kind == "real_file"][:n]
    for c in planted:
        digest = hashlib.sha256(c.path.read_bytes()).hexdigest()
        entry = cache / prep_key(Preprocessing(32)) / digest[:2] / f"{digest}.npy"
        entry.parent.mkdir(parents=True, exist_ok=True)
        if not entry.exists():
            os.mkfifo(entry)
    return planted


def bundle_edits(model: Path, work: Path) -> list[tuple[str, str]]:
    """(edit, outcome) for altered copies of the model: unsigned edits of model.json, and re-signed ones with bad
    values (as someone who knows the format would make); each must be a one-line BundleError."""
    sys.path.insert(0, str(ROOT / "tests"))
    from bundle_tools import edit
    from cxrad.detectors import load_detector
    from cxrad.errors import BundleError
    edits = {"image_size 2048 (unsigned)": lambda d: d["params"].update(image_size=2048),
             "threshold 1e308 (unsigned)": lambda d: (d.update(threshold=1e308), d["thresholds"].update(quantile=1e308)),
             "params [1]": lambda d: d.update(params=[1]), "state [1]": lambda d: d.update(state=[1]),
             "state 'x'": lambda d: d.update(state="x"), "depth 0": lambda d: d["params"].update(depth=0),
             "image_size 64.5": lambda d: d["params"].update(image_size=64.5),
             "thresholds 'x'": lambda d: d.update(thresholds="x"), "normal_scores [nan]": lambda d: d.update(
                 normal_scores=[float("nan")] * 3), "history [1]": lambda d: d.update(history=[1]),
             "training_data [1]": lambda d: d.update(training_data=[1]),
             "preprocessing 'x'": lambda d: d.update(preprocessing="x")}
    out = []
    for name, change in edits.items():
        folder = work / "edits" / name.replace(" ", "_").replace("'", "").replace("[", "").replace("]", "")
        shutil.copytree(model, folder)
        if name.endswith("(unsigned)"):
            doc = json.loads((folder / "model.json").read_text())
            change(doc)
            (folder / "model.json").write_text(json.dumps(doc))
        else:
            edit(folder, change)
        try:
            load_detector(folder, device="cpu")
            out.append((name, "LOADED"))
        except BundleError as exc:
            out.append((name, "refused: " + str(exc).split(": ", 1)[-1][:90] if "\n" not in str(exc) else "MULTI-LINE"))
        except Exception as exc:  # a raw exception is a broken promise
            out.append((name, f"RAW {type(exc).__name__}"))
    return out


def sidecar_edits(model: Path, work: Path) -> list[tuple[str, str]]:
    try:
        from cxrad.detectors import load_detector
        from cxrad.errors import ExportError
        from cxrad.serving.onnx_export import OnnxScorer, export_onnx
        export_onnx(load_detector(model, device="cpu"), work / "export")
    except Exception as exc:  # the onnx extra is optional
        return [("(export)", f"skipped: {type(exc).__name__}")]
    base = json.loads((work / "export" / "model.cxrad.json").read_text())
    edits = {"threshold 1e308": ("threshold", 1e308), "threshold NaN": ("threshold", float("nan")),
             "normal_scores []": ("normal_scores", []), "normal_scores [NaN]": ("normal_scores", [float("nan")] * 2),
             "inputs [1]": ("inputs", [1]), "chunk 'x'": ("chunk", "x"), "thresholds []": ("thresholds", []),
             "onnx {file: 1}": ("onnx", {"file": 1}), "model.onnx a FIFO": None, "sidecar -> /dev/zero": None}
    out = []
    for name, change in edits.items():
        folder = work / "sidecars" / hashlib.sha1(name.encode()).hexdigest()[:8]
        shutil.copytree(work / "export", folder)
        if change is None and "FIFO" in name:
            (folder / "model.onnx").unlink()
            os.mkfifo(folder / "model.onnx")
        elif change is None:
            (folder / "model.cxrad.json").unlink()
            (folder / "model.cxrad.json").symlink_to("/dev/zero")
        else:
            doc = copy.deepcopy(base)
            doc[change[0]] = change[1]
            if change[0] == "threshold":  # the active threshold is also the stored one of its rule
                doc["thresholds"][doc["threshold_rule"]] = change[1]
            (folder / "model.cxrad.json").write_text(json.dumps(doc))
        try:
            OnnxScorer(folder)
            out.append((name, "LOADED"))
        except ExportError as exc:
            out.append((name, "refused: " + str(exc).split(": ", 1)[-1][:90]))
        except Exception as exc:
            out.append((name, f"RAW {type(exc).__name__}"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="generated files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=os.environ.get("CXRAD_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--workers", default="2", help="decoding threads of cxrad score, one run each (e.g. 1,2,4)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before the scorer counts as hung")
    ap.add_argument("--max-rss-gib", type=float, default=1.5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--keep", help="keep the generated files and outputs in this folder")
    args = ap.parse_args(argv)
    workers = [int(w) for w in str(args.workers).split(",")]

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

        import pandas as pd
        from cxrad.serving.streaming import read_scores
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONWARNINGS="ignore")
        runs, situations = [], []
        for k, w in enumerate(workers):
            out, cache = work / f"out-{w}", work / f"cache-{w}"
            planted = plant_cache_fifos(gen, cases, cache)
            cmd = [sys.executable, "-m", "cxrad", "score", str(work / "files"), "--model", str(model), "--out",
                   str(out), "--device", "cpu", "--quiet", "--workers", str(w), "--batch-size", str(args.batch_size),
                   "--cache-dir", str(cache)]
            rival = None
            if k == 0:  # a second writer on the same folder, started once the first has written rows
                def start_rival(csv=out / "scores.csv"):
                    deadline = time.time() + 600
                    while not csv.exists() and time.time() < deadline:
                        time.sleep(0.5)
                    return run_scorer(cmd, env, work, "rival", 300)
                import concurrent.futures
                rival = concurrent.futures.ThreadPoolExecutor(1).submit(start_rival)
            r = run_scorer(cmd, env, work, f"w{w}", args.timeout)
            rv = rival.result() if rival is not None else None  # (before the rows are read: it must not write)
            csv = out / "scores.csv"
            table = read_scores(csv) if csv.exists() else pd.DataFrame(columns=["path", "score", "error"])
            outcome, problems = gen.check_table(table, cases)
            ok_planted = all(not table.loc[table["path"] == str(c.path), "error"].astype(bool).any() for c in planted)
            r.update(workers=w, rows=len(table), problems=problems, outcome=outcome, table=table,
                     ok=not r["hung"] and r["rc"] == 3 and r["tracebacks"] == 0 and not problems and ok_planted
                     and r["peak_gib"] < args.max_rss_gib)
            situations.append((f"{len(planted)} FIFOs planted in the cache ({w} threads)",
                               "no hang; those files scored" if ok_planted and not r["hung"] else "FAILED"))
            if rv is not None:
                fine = rv["rc"] == 1 and "being written by another cxrad run" in rv["stderr"] and rv["tracebacks"] == 0
                situations.append(("a second `cxrad score` into the same --out, once the first has written rows",
                                   f"refused before scoring anything (exit {rv['rc']} after {rv['seconds']:.0f} s, most of it start-up and model load)" if fine else
                                   f"FAILED (exit {rv['rc']})"))
                before = csv.read_bytes()
                again = run_scorer(cmd + ["--resume"], env, work, "resume", 600)
                same = csv.read_bytes() == before
                situations.append(("--resume of the finished run (hostile names included)",
                                   f"nothing scored twice, files unchanged ({again['seconds']:.0f} s)" if same and
                                   again["rc"] == 3 else f"FAILED (exit {again['rc']}, changed {not same})"))
            runs.append(r)
        fifo = work / "list.fifo"
        os.mkfifo(fifo)
        fl = run_scorer([sys.executable, "-m", "cxrad", "score", "--files-from", str(fifo), "--model", str(model),
                         "--device", "cpu", "--quiet"], env, work, "fifo-list", 120)
        situations.append(("--files-from a FIFO", "refused at once (exit 1)" if fl["rc"] == 1 and not fl["hung"] and
                           not fl["tracebacks"] else f"FAILED (exit {fl['rc']}, hung {fl['hung']})"))
        edits = bundle_edits(model, work) + sidecar_edits(model, work)
        bad_edits = [e for e in edits if not e[1].startswith(("refused", "skipped"))]
        ok = all(r["ok"] for r in runs) and not any("FAILED" in s[1] for s in situations) and not bad_edits
        reasons = collections.Counter(reason_group(e) for e in runs[0]["table"]["error"] if isinstance(e, str) and e)
        write_report(Path(args.out) / "fuzz.md", args, cases, runs, reasons, situations, edits,
                     dict(t_gen=t_gen, disk=disk, ok=ok))
        for r in runs:
            print(f"{'PASS' if r['ok'] else 'FAIL'} workers={r['workers']}: {len(cases)} files, {r['rows']} rows, peak "
                  f"RSS {r['peak_gib']:.2f} GiB, {r['seconds']:.0f} s, {len(r['problems'])} problems, "
                  f"{r['tracebacks']} tracebacks, hung={r['hung']}")
        for name, outcome in situations + edits:
            print(f"  {name}: {outcome}")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def write_report(path: Path, args, cases, runs, reasons, situations, edits, r: dict) -> None:
    kinds = collections.Counter(c.kind for c in cases)
    expect = {c.kind: c.expect for c in cases}
    first = runs[0]
    n_scored = sum(v for (k, got), v in first["outcome"].items() if got == "score")
    lines = [
        f"# Fuzz benchmark: `cxrad score` on {len(cases):,} hostile files",
        "",
        f"**{'PASS' if r['ok'] else 'FAIL'}**: at every thread count, {first['rows']:,} rows for {len(cases):,} files "
        f"({n_scored:,} scored, {first['rows'] - n_scored:,} error rows with a reason), "
        f"{sum(x['tracebacks'] for x in runs)} tracebacks, {sum(x['hung'] for x in runs)} hangs, "
        f"{sum(len(x['problems']) for x in runs)} broken invariants; every situation below handled.",
        "",
        "| decoding threads | peak RSS of the scoring process | wall time | rows | exit code | broken invariants |",
        "|---|---|---|---|---|---|",
    ]
    for x in runs:
        lines.append(f"| {x['workers']} | {x['peak_gib']:.2f} GiB (limit {args.max_rss_gib} GiB) | {x['seconds']:.0f} s "
                     f"({len(cases) / max(x['seconds'], 1e-9):.0f} files/s) | {x['rows']:,} | {x['rc']} | "
                     f"{len(x['problems'])} |")
    lines += [
        "",
        f"Generating the files: {r['t_gen']:.0f} s, {r['disk'] / 2**20:.0f} MiB on disk. Batch size {args.batch_size}; "
        f"a fresh cache for each run. Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs "
        f"(load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}), Python "
        f"{platform.python_version()}.",
        "",
        f"Command: `nice -n 10 python benchmarks/fuzz.py --n {args.n} --seed {args.seed} --workers {args.workers}` "
        "(files from tests/fuzz/generate.py, made in a scratch folder and deleted; the model is a 32 px DAE "
        "trained for the run). Every kind is described in generate.py; `expect` is what the scorer must give "
        "(score: a valid image; error: must never get a score; any: truncated or bit-flipped files, either).",
        "",
        "## Situations around the files",
        "",
        "| situation | outcome |",
        "|---|---|",
    ]
    lines += [f"| {name} | {outcome} |" for name, outcome in situations]
    lines += ["", "## Altered bundles and sidecars (each must be a one-line refusal)", "", "| edit | outcome |",
              "|---|---|"]
    lines += [f"| {name} | {outcome.replace('|', '/')} |" for name, outcome in edits]
    lines += ["", f"## Files by kind ({first['workers']} threads; the other runs met the same invariants)", "",
              "| kind | files | expect | scored | error rows |", "|---|---|---|---|---|"]
    for kind in sorted(kinds, key=lambda k: (-kinds[k], k)):
        lines.append(f"| {kind} | {kinds[kind]} | {expect[kind]} | {first['outcome'][(kind, 'score')]} | "
                     f"{first['outcome'][(kind, 'error')]} |")
    lines += ["", f"Error reasons ({len(reasons)} kinds, numbers and quoted values replaced; most frequent 40):",
              "", "| rows | reason |", "|---|---|"]
    lines += [f"| {n} | {reason.replace('|', '/')} |" for reason, n in reasons.most_common(40)]
    problems = [p for x in runs for p in x["problems"]]
    if problems:
        lines += ["", "Broken invariants (first 50):", ""] + [f"- {p}" for p in problems[:50]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
