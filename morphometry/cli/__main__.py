"""``python -m morphometry.cli``: the ``morpho`` command."""

import sys

from morphometry.cli import main

sys.exit(main())
