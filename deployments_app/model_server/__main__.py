"""``python -m model_server``: the same as ``python server.py`` (see server.py)."""

import sys

from .server import main

sys.exit(main())
