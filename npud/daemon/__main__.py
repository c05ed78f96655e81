"""``python -m npud.daemon``: the same as the ``npud`` command."""

import sys

from npud.daemon.main import main

sys.exit(main())
