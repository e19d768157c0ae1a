"""`python -m krona_core <command>` (see krona_core/cli/main.py)."""

import sys

from .cli.main import main

sys.exit(main())
