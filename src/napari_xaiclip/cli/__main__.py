"""``python -m napari_xaiclip.cli``."""

import sys

from . import main

sys.exit(main())
