"""`python -m massact`: the `massact` console script (subcommands per stage)."""

import sys

from .cli import main

sys.exit(main())
