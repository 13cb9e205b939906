"""``python -m radsearch``: the ``radsearch`` command."""

import sys

from radsearch.commands.main import main

sys.exit(main())
