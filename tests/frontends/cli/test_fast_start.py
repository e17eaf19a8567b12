"""Fast start: help, version, argument errors and ``import cxrad`` import no heavy library, and scoring with a
stored threshold imports no scikit-learn. Checked on ``sys.modules`` of a fresh interpreter (timings live in
benchmarks/scoring_speed.py, not here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src"
HEAVY = ("torch", "pandas", "sklearn", "scipy", "onnx", "onnxruntime", "ray")

PROBE = """
import json, sys
argv = json.loads(sys.argv[1])
code = None
try:
    if argv == ["import"]:
        import cxrad
        cxrad.__version__
    else:
        from cxrad.frontends.cli import main
        code = main(argv)
except SystemExit as exc:
    code = exc.code
loaded = {m.split(".")[0] for m in sys.modules}
print(json.dumps({"code": code, "heavy": sorted(loaded & set(json.loads(sys.argv[2])))}))
"""


def probe(argv: list[str], heavy=HEAVY) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(list(heavy))],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv,code", [
    (["import"], None), (["--help"], 0), (["--version"], 0), (["score", "--help"], 0), (["train", "--help"], 0),
    (["export", "--help"], 0), (["score"], 1), (["score", "x.png", "--resume"], 1), (["no-such-command"], 2),
    (["score", "x.png", "--batch-size", "many"], 2), (["export", "m", "--format", "tflite"], 2)])
def test_light_commands_import_no_heavy_library(argv, code):
    result = probe(argv)
    assert result["heavy"] == [], f"`cxrad {' '.join(argv)}` imported {result['heavy']}"
    assert result["code"] == code, result  # help and version exit 0, argparse errors 2, the command's checks 1


def test_scoring_with_a_stored_threshold_imports_no_scikit_learn(tmp_path, tiny_model, sample_test_files):
    _, bundle = tiny_model("dae")
    result = probe(["score", sample_test_files[0], "--model", str(bundle), "--quiet", "--device", "cpu",
                    "--cache-dir", str(tmp_path / "cache")], heavy=("torch", "sklearn", "scipy"))
    assert result["code"] == 0
    assert result["heavy"] == ["torch"], f"scoring imported {result['heavy']}"
