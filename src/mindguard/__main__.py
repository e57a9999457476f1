"""`python -m mindguard` runs the command line."""

import sys

from mindguard.cli import main

sys.exit(main())
