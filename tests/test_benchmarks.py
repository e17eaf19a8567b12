"""The GPU recipe and the learning-curve benchmark, end to end at tiny scale on the CPU, so that they run
as they are the moment a GPU is lent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_recipe_runs_end_to_end_at_tiny_scale(tmp_path, shared_data):
    """Every stage of the GPU recipe (the shipped default's fusion recipe, the DAE on the adult-first pool, and
    DDAD against the normal-only ensemble) runs at tiny scale on the CPU and writes its tables, bundles and log."""
    env = dict(os.environ, SAMPLES="300", IMAGE_SIZE="32", DEVICE="cpu", PY=sys.executable,
               PARAMS="width=8 depth=3 batch_size=16", CXRAD_DATA=str(shared_data), OMP_NUM_THREADS="2",
               DDAD_SAMPLES="60", DDAD_PROTOCOLS="tb", DDAD_SEEDS="0", FUSED_SAMPLES="300 100",
               FUSED_IMAGE_SIZE="32", FUSED_PARAMS="width=8 depth=3 batch_size=16")
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_recipe.sh"), str(tmp_path / "gpu")], env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / "gpu" / "learning_curves.md").read_text()
    assert "| samples | n seeds | val loss | kermany224 | tb | nih | nih14 | covid | mean |" in table
    from cxrad.data import hold_out_normals, load_images
    from cxrad.data.protocols import training_pool
    from cxrad.imaging import Preprocessing
    pool = load_images(training_pool("adult-weighted", shared_data), Preprocessing(32))
    n_train = len(hold_out_normals(pool, 0.1, 0)[0])
    assert f"| {n_train:,} (min val) | 1 |" in table  # one epoch over the adult-first pool's training images
    assert (tmp_path / "gpu" / "learning_curves.png").stat().st_size > 10_000
    from cxrad.detectors import load_detector
    det = load_detector(tmp_path / "gpu" / "run" / "dae32-adult-weighted-gpu" / "seed0" / "bundle")
    assert det.image_size == 32 and det.width == 8 and det.batch_size == 16 and det.training_finished_
    assert "dae32-adult-weighted-gpu" in (tmp_path / "gpu" / "mix_protocols.md").read_text()
    fused = load_detector(tmp_path / "gpu" / "fused")  # two mix DAEs, thresholds from films neither trained on
    assert fused.kind == "fusion" and [m.width for m in fused.members_] == [8, 8] and fused.n_val_ == 146
    assert "| dae32-mix-fused-gpu |" in (tmp_path / "gpu" / "mix_protocols.md").read_text()
    ddad = (tmp_path / "gpu" / "ddad.md").read_text()
    assert "| tb |" in ddad and "| ddad |" in ddad and "| normal-only |" in ddad
    assert "finished in" in (tmp_path / "gpu" / "log.txt").read_text()


@pytest.mark.slow
def test_service_load_benchmark_runs_at_tiny_scale(tmp_path, shared_data):
    pytest.importorskip("pynetdicom")
    env = dict(os.environ, CXRAD_DATA=str(shared_data), PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "service_load.py"), "--associations", "2",
                             "--dicom-films", "4", "--http-clients", "1", "--http-films", "3", "--out",
                             str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / "service_load.md").read_text()
    assert "| films sent / acknowledged / refused | 11 / 11 / 0 |" in table
    assert "| **lost** (acknowledged, no result) | **0** |" in table
    assert "| reports received by the destination | 8 " in table


@pytest.mark.slow
def test_score_threads_benchmark_runs_at_tiny_scale(tmp_path, shared_data):
    """`cxrad score` end to end against the model alone, every way the model can run, on 130 real JPEGs."""
    env = dict(os.environ, CXRAD_DATA=str(shared_data), PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "score_threads.py"), "--limit", "130",
                             "--rounds", "1", "--out", str(tmp_path), "--model", "dae-cxr-64-300k"], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / "score_threads.md").read_text()
    assert "130 kermany224 JPEGs (224 px), the model dae-cxr-64-300k (dae, 64 px)" in table
    for row in ("| model alone, preloaded arrays, one batch at a time, 1 thread |",
                "| `cxrad score` end to end, default (one batch per core at once) |",
                "| `cxrad score` end to end, --threads 1 |", "Start-up of `cxrad score`"):
        assert row in table


@pytest.mark.slow
def test_node_floor_benchmark_runs_at_tiny_scale(tmp_path, shared_data):
    """pynetdicom's own CPU per film in and per report out, against the model's, on 10 real films."""
    pytest.importorskip("pynetdicom")
    env = dict(os.environ, CXRAD_DATA=str(shared_data), PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "node_floor.py"), "--films", "10",
                             "--models", "dae-cxr-64-300k", "--out", str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "node_floor.json").read_text())
    assert report["films"] == 10 and report["film_in_scp_cpu_ms"] > 0 and report["report_out_scu_cpu_ms"] > 0
    (row,) = report["models"]
    assert row["bound"] == pytest.approx(row["model_cpu_ms"] / (row["model_cpu_ms"] + report["film_in_scp_cpu_ms"]
                                                                 + report["report_out_scu_cpu_ms"]))
    assert "| `dae-cxr-64-300k` |" in (tmp_path / "node_floor.md").read_text()
