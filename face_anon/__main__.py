"""``python -m face_anon``: the same as the ``face-anon`` command."""

import sys

from .apps.cli import main


sys.exit(main())
