"""``python -m lifelong``: the same command as the ``lifelong`` console script."""

import sys

from lifelong.platform.cli import main

sys.exit(main())
