"""`python -m vnet [CONFIG]` runs a node; `python -m vnet route [CONFIG]` runs the route."""

import sys

from vnet.cli import main

sys.exit(main())
