"""The ``cxrad`` command: one module per subcommand.

Settings come from flags or from a YAML file (``--config``) whose keys are the long flag names with dashes or
underscores; flags given on the command line win. Detector settings go in ``params:`` (YAML) or
``--param key=value``. Parsing imports nothing heavy, so ``--help`` and argument errors are quick.

cxrad's own warnings (``CxradWarning``) and its ``cxrad`` logger's messages are printed as plain lines on
stderr (``warning: ...``), once, by the first process of a torchrun job only.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings

from cxrad.errors import CxradError, CxradWarning
from cxrad.version import __version__
from cxrad.frontends.cli import adapt, app, demo, detectors, evaluate, export, fuse, report, score, serve, train
from cxrad.frontends.cli.common import EXIT_BROKEN_PIPE, EXIT_FATAL, is_main_process, load_config

COMMANDS = (train, adapt, fuse, score, evaluate, report, export, serve, app, demo, detectors)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrad", description=(
        "Unsupervised anomaly detection on chest X-rays: learn what healthy radiographs look like from normal "
        "images only, then flag the ones that deviate. A research tool, not a diagnostic device."))
    parser.add_argument("--version", action="version", version=f"cxrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub, argv or [])
    return parser


class _MessageFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


@contextlib.contextmanager
def _user_messages():
    """cxrad's warnings and log messages as one line each on stderr (nothing from other ranks of a torchrun job
    but errors); other libraries' warnings as Python shows them."""
    main_process = is_main_process()
    logger = logging.getLogger("cxrad")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageFormatter())
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if main_process else logging.ERROR)
    logger.propagate = False
    with warnings.catch_warnings():
        warnings.simplefilter("always", CxradWarning)
        show = warnings.showwarning

        def show_warning(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, CxradWarning):
                return show(message, category, filename, lineno, file, line)
            if main_process:
                print(f"warning: {message}", file=sys.stderr)
        warnings.showwarning = show_warning
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (``cxrad score --json | head``): stop quietly, as Unix tools do.
    Python would otherwise complain again when it flushes stdout at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args = load_config(parser, argv)
        with _user_messages():
            return args.func(args)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except (CxradError, OSError, ValueError, RuntimeError) as exc:
        if os.environ.get("CXRAD_DEBUG"):  # developers want the traceback
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"cxrad: error: {message}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("cxrad: interrupted", file=sys.stderr)
        return 130
