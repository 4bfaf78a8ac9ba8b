"""`python -m spectra` runs the `spectra` command line."""

import sys

from .cli import main

sys.exit(main())
