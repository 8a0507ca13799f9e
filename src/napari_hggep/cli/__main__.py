"""``python -m napari_hggep.cli`` (as torchrun starts it): the ``napari-hggep`` command."""
import sys

from . import main

sys.exit(main())
