"""`python -m export` runs the `export` command line."""

import sys

from .cli import main

sys.exit(main())
