"""``python -m conserviz_utils``: the ``conserviz`` command (what ``torchrun ... -m conserviz_utils`` runs)."""

import sys

from conserviz_utils.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
