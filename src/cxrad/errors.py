"""The errors cxrad raises on purpose (each stops a command with a one-line message; none is a bug), and the
warnings it gives (the command line prints each as one ``warning:`` line)."""
from __future__ import annotations


class CxradError(Exception):
    """Base of the errors below."""


class UserError(CxradError):
    """A command line, setting or config the user must fix."""


class DataError(CxradError, ValueError):
    """A dataset problem the user must fix (missing path, no images, no normal images)."""


class BundleError(CxradError, ValueError):
    """A model bundle that cannot be loaded; the message says why."""


class NotFittedError(CxradError, RuntimeError):
    """A detector used before ``fit`` or ``load``."""


class ImageReadError(CxradError, ValueError):
    """A file that cannot be turned into an image; the message says why, in one line."""


class ExportError(CxradError, ValueError):
    """A model that cannot be exported in the asked format; the message says why and what to do instead."""


class CxradWarning(UserWarning):
    """Base of cxrad's warnings: something the user should know, that does not stop the work."""


class DataWarning(CxradWarning):
    """A dataset read in a way the user may not expect (e.g. a folder without class sub-folders taken as normal)."""
