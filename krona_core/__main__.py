"""`python -m krona_core <command>` (see krona_core/cli/main.py)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
