"""`python -m vital ...`: the same command line as the `vital` script."""

import sys

from vital.cli import main

sys.exit(main())
