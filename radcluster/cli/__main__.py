"""``python -m radcluster.cli``: the ``radcluster`` command (the tests run it this way)."""

import sys

from . import main

sys.exit(main())
