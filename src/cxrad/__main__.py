"""``python -m cxrad``: the same as the ``cxrad`` command (and what torchrun runs with ``-m cxrad``)."""
import sys

from cxrad.frontends.cli import main

sys.exit(main())
