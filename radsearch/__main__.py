"""``python -m radsearch``: the ``radsearch`` command."""

import sys

from radsearch.commands.main import main

if __name__ == "__main__":
    sys.exit(main())
