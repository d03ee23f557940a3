"""``python -m api.cli``: the ``troupe`` command, without the installed script."""

import sys

from api.cli.main import main

if __name__ == "__main__":  # not when a tool imports every module (tests/test_messages.py)
    sys.exit(main())
