"""``python -m lifelong``: the same command as the ``lifelong`` console script."""

import sys

from lifelong.cli.main import main

sys.exit(main())
