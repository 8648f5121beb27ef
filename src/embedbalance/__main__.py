"""``python -m embedbalance``: the same as the ``embedbalance`` command."""

import sys

from .cli import main

sys.exit(main())
