"""`python -m vital.cli`: the `vital` command."""

import sys

from vital.cli import main

sys.exit(main())
