"""The README's Python example runs as written (in a fresh process, in an empty folder) and does what its
comments say."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text("utf-8"), re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path):
    code = readme_python()
    check = ("\nimport numpy as np\n"
             "assert list(table['path']) == list(images.frame['path']) and len(scores) == len(images)\n"
             "assert det.threshold_rule_ == 'crossing' and set(np.unique(verdicts)) <= {0.0, 1.0}\n"
             "assert load_detector('runs/dae').kind == 'dae'\n")
    import cxrad
    env = dict(os.environ, PYTHONPATH=str(Path(cxrad.__file__).parents[1]), OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", code + check], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "dae" / "model.json").exists()


def test_files_named_in_docs_and_docstrings_exist():
    """Paths of the repository named in the README, the docs, the benchmarks' results and the code's docstrings
    (``tests/frontends/app/test_browser.py``...) point at files that exist."""
    pattern = re.compile(r"\b((?:tests|src/cxrad|benchmarks|tools|docs)/[\w/.-]+?"
                         r"\.(?:py|md|yaml|json|jsonl|csv|png|sh))(?![\w.])")
    sources = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/**/*.md"),
               *ROOT.glob("benchmarks/*.py"), *ROOT.glob("src/cxrad/**/*.py"), *ROOT.glob("tests/**/*.py"),
               *ROOT.glob("tools/*.py")]
    missing = sorted({f"{src.relative_to(ROOT)} names {name}" for src in sources
                      for name in pattern.findall(src.read_text("utf-8")) if not (ROOT / name).exists()})
    assert not missing, "\n".join(missing)
