"""``python -m face_anon.apps.web`` is ``face-anon-app``."""

import sys

from .app import main


sys.exit(main())
