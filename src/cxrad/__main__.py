"""``python -m cxrad`` and the ``cxrad`` command (and what torchrun runs with ``-m cxrad``)."""
import signal
import sys


def entry() -> int:
    """The command line, with Ctrl-C handled from the first instant. While the command modules are imported the
    interrupt is held back and acted on after; during the run it raises KeyboardInterrupt as usual, and whatever
    it ends as (an extension module interrupted while importing turns it into an ImportError, a weakref callback
    into an 'Exception ignored' report) the run ends with one line and exit code 130, never a traceback."""
    received = []

    def interrupt(signum, frame):
        received.append(signum)
        if importing:
            return  # acted on once the imports are done
        raise KeyboardInterrupt

    importing = True
    before_hook = sys.unraisablehook
    sys.unraisablehook = lambda info: None if received else before_hook(info)
    before = signal.signal(signal.SIGINT, interrupt)
    try:
        from cxrad.frontends.cli import main
        importing = False
        if received:
            raise KeyboardInterrupt
        return main()
    except BaseException:
        if not received:
            raise
        print("cxrad: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, before)
        sys.unraisablehook = before_hook


if __name__ == "__main__":
    sys.exit(entry())
