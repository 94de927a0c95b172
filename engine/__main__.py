"""``python -m engine``: execute one flow run by id (what a runner starts)."""

import sys

from ._main import main

if __name__ == "__main__":
    sys.exit(main())
