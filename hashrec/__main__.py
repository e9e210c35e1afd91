"""``python -m hashrec``: the same command line as ``hashrec`` (``torchrun ... -m hashrec train`` uses it)."""

import sys

from hashrec.cli import main

sys.exit(main())
