"""``python -m grounded.cli``: the same as the ``grounded`` command."""

import sys

from grounded.cli import main

sys.exit(main())
