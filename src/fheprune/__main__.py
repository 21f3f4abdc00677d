"""``python -m fheprune``: the same as the ``fheprune`` console script."""

import sys

from fheprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
