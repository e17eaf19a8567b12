"""The ``cxrad`` command: one module per subcommand.

Settings come from flags or from a YAML file (``--config``) whose keys are the long flag names with dashes or
underscores; flags given on the command line win. Detector settings go in ``params:`` (YAML) or
``--param key=value``. Parsing imports nothing heavy, so ``--help`` and argument errors are quick.
"""
from __future__ import annotations

import argparse
import os
import sys

from cxrad.errors import CxradError
from cxrad.version import __version__
from cxrad.frontends.cli import adapt, app, demo, detectors, evaluate, export, report, score, serve, train
from cxrad.frontends.cli.common import EXIT_FATAL, load_config

COMMANDS = (train, adapt, score, evaluate, report, export, serve, app, demo, detectors)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrad", description=(
        "Unsupervised anomaly detection on chest X-rays: learn what healthy radiographs look like from normal "
        "images only, then flag the ones that deviate. A research tool, not a diagnostic device."))
    parser.add_argument("--version", action="version", version=f"cxrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub, argv or [])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args = load_config(parser, argv)
        return args.func(args)
    except (CxradError, OSError, ValueError, RuntimeError) as exc:
        if os.environ.get("CXRAD_DEBUG"):  # developers want the traceback
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"cxrad: error: {message}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("cxrad: interrupted", file=sys.stderr)
        return 130
