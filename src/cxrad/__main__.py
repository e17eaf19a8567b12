"""``python -m cxrad`` and the ``cxrad`` command (and what torchrun runs with ``-m cxrad``)."""
import sys


def entry() -> int:
    """The command line, with Ctrl-C handled from the first instant: an interrupt while the modules are still
    being imported (before ``main`` could catch it) ends as quietly as one during a run."""
    try:
        from cxrad.frontends.cli import main
        return main()
    except KeyboardInterrupt:
        print("cxrad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(entry())
