"""``python -m mimir_fast`` is the ``mimir-fast`` command."""

import sys

from .cli import main

sys.exit(main())
