"""`python -m training` runs the `training` command line."""

import sys

from .cli import main

sys.exit(main())
