"""``python -m npud.cli``: the same as the ``npuctl`` command."""

import sys

from npud.cli.main import main

sys.exit(main())
