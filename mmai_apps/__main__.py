"""``python -m mmai_apps ...`` is the ``mmai`` command."""

import sys

from mmai_apps.cli import main

sys.exit(main())
