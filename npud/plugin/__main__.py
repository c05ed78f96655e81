"""``python -m npud.plugin``: the same as the ``npud-device-plugin`` command."""

from npud.plugin.main import main

main()
