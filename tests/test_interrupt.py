"""Ctrl-C at any moment of a `cxrad` run, even while its modules are still being imported, ends with one line
and exit code 130, never a KeyboardInterrupt traceback (issue 21, item 18). (An interrupt during Python's own
start-up, before any cxrad code runs, is the interpreter's business: the child says when it is ready.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cxrad

# what the `cxrad` console script runs (cxrad.__main__:entry), the child saying when it gets there
CHILD = ("import sys; from cxrad.__main__ import entry; sys.argv = ['cxrad', *sys.argv[1:]]; "
         "sys.stderr.write('ready\\n'); sys.stderr.flush(); sys.exit(entry())")


def test_ctrl_c_during_start_up_prints_no_traceback():
    env = dict(os.environ, PYTHONPATH=str(Path(cxrad.__file__).parents[1]), PYTHONWARNINGS="ignore")
    seen = []
    for delay in (0.05, 0.08, 0.12, 0.16, 0.2, 0.3, 0.45, 0.6):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, "score", "x.png", "--model", "no-such-model"],
                                stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stderr.readline() == "ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        seen.append((delay, proc.returncode))
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err[-2000:])
        assert proc.returncode in (130, 1), (delay, proc.returncode, err)  # interrupted, or done before it
        assert proc.returncode == 1 or err.strip().splitlines()[-1] == "cxrad: interrupted"
    assert any(code == 130 for _, code in seen), seen
