"""`python -m catalog` runs the `catalog` command line."""

import sys

from .cli import main

sys.exit(main())
