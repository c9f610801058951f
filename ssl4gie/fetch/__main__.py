"""``python -m ssl4gie.fetch``: see :mod:`ssl4gie.fetch.cli`."""

import sys

from ssl4gie.fetch.cli import main

if __name__ == "__main__":
    sys.exit(main())
