"""`python -m ltad ...`: the `ltad` command where the console script is not on PATH."""

import sys

from ltad.cli import main

sys.exit(main())
