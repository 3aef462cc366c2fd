"""``python -m fdbworkers``: the same as the ``fdbworkers`` command."""

from .cli import main

if __name__ == "__main__":
    main()
