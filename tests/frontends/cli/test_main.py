"""The ``cxrad`` entry point: help that tells the truth, a quick start, one-line errors, ``python -m cxrad``."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cxrad.frontends.cli import main
from cxrad.version import __version__


@pytest.mark.parametrize("command, words", [
    (None, ["train", "score", "evaluate", "report", "app", "demo", "detectors", "normal images", "--version"]),
    ("train", ["normal images", "--config", "--device", "--threshold", "--max-minutes", "--init", "--resize",
               "continues"]),
    ("score", ["error row", "exit code 3", "percentile", "--out", "--json", "--resume", "preamble"]),
    ("evaluate", ["AUROC (bootstrap 95% CI)", "confusion matrix", "per source", "--out"]),
    ("demo", ["bundled", "--epochs", "epochs of the seed CAE", "folder for the models"]),
    ("report", ["HTML", "t-SNE", "--max-tsne"]),
    ("app", ["127.0.0.1", "--port"]),
])
def test_help_explains_each_command(capsys, command, words):
    with pytest.raises(SystemExit) as info:
        main(([command] if command else []) + ["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "%%" not in text
    for w in words:
        assert w in text, w


def test_every_option_has_help():
    from cxrad.frontends.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest not in ("help", "config") or action.dest == "seed":
                assert action.help, f"cxrad {name} {action.option_strings} has no help"


def run_python(*code_or_args, env=None):
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, timeout=120, env=env)


def test_help_version_and_argument_errors_import_no_heavy_library():
    probe = ("import sys; from cxrad.frontends.cli import main\n"
             "for argv in (['--help'], ['--version'], ['train', '--bogus'], ['score']):\n"
             "    try: main(argv)\n"
             "    except SystemExit: pass\n"
             "import cxrad\n"
             "heavy = sorted(m for m in ('torch', 'pandas', 'sklearn', 'scipy') if m in sys.modules)\n"
             "print('HEAVY', heavy)")
    result = run_python("-c", probe)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
    assert run_python("-m", "cxrad", "--version").stdout.strip() == f"cxrad {__version__}"


def test_python_dash_m_gives_one_line_errors():
    result = run_python("-m", "cxrad", "app", "--port", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "cxrad: error: --port must be between 1 and 65535, not 0"
    result = run_python("-m", "cxrad", "score", "/nonexistent/x.png", "--model", "/nonexistent/model")
    assert result.returncode == 1 and "no such model bundle" in result.stderr
