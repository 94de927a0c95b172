"""``python -m engine.cli``: the same as the ``sluice`` console script."""

from . import main

if __name__ == "__main__":
    main()
