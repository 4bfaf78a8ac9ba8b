"""`python -m runtime` runs the `runtime` command line."""

import sys

from .cli import main

sys.exit(main())
