"""``python -m crdtcoord``: the ``crdtcoord`` command."""

import sys

from crdtcoord.cli import main

sys.exit(main())
