"""Kill test (issue #13): ``cxrad train`` with a checkpoint every epoch, SIGKILLed 20 times at seeded random
points (during epochs, inside checkpoint writes, inside the bundle write) and run again each time. After every
kill the output folder holds either the previous valid bundle or the new one, whole (checksum verified and
loadable), never a mix; the run that finally completes gives exactly the bundle, and the scores, of an
uninterrupted run.

Kills land in two ways: after a random delay (mostly mid-epoch), or at the n-th call of os.fsync, os.replace
or os.unlink on a given file, by a wrapper that SIGKILLs its own process just before that call (a temporary
written but not synced, written but not renamed, the commit rename not done, old weights not yet removed).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tiny_models import SHARED, normal_images

pytestmark = pytest.mark.slow
KILLS = 20
EPOCHS = 4

WRAPPER = r'''
import os, signal, sys, runpy
fn_name, needle, nth = os.environ["KILL_AT"].split(":")
seen = 0
def path_of(fn, args):
    if fn == "fsync":  # a descriptor: the temporary it writes
        try:
            return os.readlink(f"/proc/self/fd/{args[0]}")
        except OSError:
            return ""
    return str(args[-1] if fn == "replace" else args[0])
def wrap(fn):
    real = getattr(os, fn)
    def inner(*args, **kwargs):
        global seen
        if fn == fn_name and needle in os.path.basename(path_of(fn, args)):
            seen += 1
            if seen == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return inner
for fn in ("fsync", "replace", "unlink"):
    setattr(os, fn, wrap(fn))
sys.argv = ["cxrad", *sys.argv[1:]]
runpy.run_module("cxrad", run_name="__main__", alter_sys=True)
'''
# (os function, part of the file name, which call): where a kill lands inside a write
EVENT_KILLS = [("fsync", ".last.safetensors", n) for n in range(1, EPOCHS + 1)] + \
    [("replace", "last.safetensors", n) for n in range(1, EPOCHS + 1)] + \
    [("fsync", ".weights-", 1), ("replace", "weights-", 1), ("fsync", ".model.json", 1),
     ("replace", "model.json", 1), ("unlink", "weights-", 1), ("unlink", "last.safetensors", 1)]


def train_cmd(manifest: Path, out: Path, cache: Path, seed: int, epochs: int) -> list[str]:
    return ["train", "--data", str(manifest), "--detector", "dae", "--image-size", "32", "--epochs", str(epochs),
            "--checkpoint-minutes", "0", "--out", str(out), "--param", "width=8", "--param", "depth=2",
            "--batch-size", "8", "--seed", str(seed), "--device", "cpu", "--quiet", "--cache-dir", str(cache)]


def start(args: list[str], wrapper: Path | None = None, kill_at: str = "") -> subprocess.Popen:
    import cxrad
    env = dict(os.environ, PYTHONPATH=str(Path(cxrad.__file__).parents[1]), PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", KILL_AT=kill_at or "none:none:0")
    head = [sys.executable, str(wrapper)] if wrapper else [sys.executable, "-m", "cxrad"]
    return subprocess.Popen(head + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("cxrad train hung") from None
    assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
    return proc.returncode


def bundle_state(folder: Path) -> tuple[str, str]:
    """(model.json text, weights sha256) of a whole bundle: its checksum is verified and it loads."""
    from cxrad.bundles import read_bundle
    from cxrad.detectors import load_detector

    doc, _ = read_bundle(folder)
    load_detector(folder, device="cpu")
    return (folder / "model.json").read_text(), doc["weights"]["sha256"]


def scores(folder: Path, files: list[str]) -> np.ndarray:
    from cxrad.detectors import load_detector
    return load_detector(folder, device="cpu").score(files)["score"].to_numpy()


def test_kills_leave_the_previous_or_the_new_bundle_and_resume_exactly(tmp_path):
    manifest = tmp_path / "normals.csv"
    pd.DataFrame({"path": normal_images(24), "label": "normal"}).to_csv(manifest, index=False)
    cache = tmp_path / "cache"
    wrapper = tmp_path / "kill_wrapper.py"
    wrapper.write_text(WRAPPER)
    probe = sorted(str(p) for p in (SHARED / "kermany224" / "test" / "PNEUMONIA").glob("*.jpeg"))[:8]

    # the previous bundle (another seed, 1 epoch; it also fills the cache) and the uninterrupted reference
    previous = tmp_path / "previous"
    assert finish(start(train_cmd(manifest, previous, cache, seed=1, epochs=1))) == 0
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    assert finish(start(train_cmd(manifest, reference, cache, seed=0, epochs=EPOCHS))) == 0
    run_s = time.monotonic() - t0
    prev_state, ref_state = bundle_state(previous), bundle_state(reference)
    assert prev_state[1] != ref_state[1]
    ref_scores = scores(reference, probe)

    rng = np.random.default_rng(13)
    out = tmp_path / "out"
    kills, cycles, landed = 0, 0, []
    while kills < KILLS:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(previous, out)  # each cycle starts from the previous bundle, no checkpoint
        cycles += 1
        while True:
            if rng.random() < 0.4:  # after a random delay: mostly mid-epoch
                proc = start(train_cmd(manifest, out, cache, seed=0, epochs=EPOCHS))
                delay = float(rng.uniform(0.2, 1.1 * run_s))
                try:
                    proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                where = f"after {delay:.1f} s"
            else:
                fn, needle, nth = EVENT_KILLS[int(rng.integers(len(EVENT_KILLS)))]
                proc = start(train_cmd(manifest, out, cache, seed=0, epochs=EPOCHS), wrapper, f"{fn}:{needle}:{nth}")
                where = f"before {fn} #{nth} of {needle}"
            rc = finish(proc)
            state = bundle_state(out)  # never a mix: one of the two whole bundles
            assert state in (prev_state, ref_state), f"after a kill {where}: the bundle is neither"
            leftovers = {p.name for p in out.iterdir()} - {"model.json", "checkpoint", "losses.csv"}
            assert all(n.startswith("weights-") or n.endswith(".tmp") for n in leftovers), leftovers
            if rc == 0:
                break
            kills += 1
            landed.append(where)
        # the completed run is the uninterrupted run's bundle, byte for byte, and scores like it
        assert state == ref_state, f"cycle {cycles}: resumed training differs from the uninterrupted run"
        assert not (out / "checkpoint").exists()
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # swept by the final write
        np.testing.assert_array_equal(scores(out, probe), ref_scores)
    assert any(w.startswith("after") for w in landed) and any("model.json" in w or "weights-" in w for w in landed) \
        and any("last.safetensors" in w for w in landed), landed
    print(f"{kills} kills in {cycles} cycles: " + "; ".join(landed))
