"""``python -m api.cli``: the ``troupe`` command, without the installed script."""

import sys

from api.cli.main import main

sys.exit(main())
