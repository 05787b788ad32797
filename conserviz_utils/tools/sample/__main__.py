"""``python -m conserviz_utils.tools.sample``: see :mod:`conserviz_utils.tools.sample.cli`."""

from conserviz_utils.tools.sample.cli import main

# Guarded: "spawn" worker processes import this module again (as "__mp_main__").
if __name__ == "__main__":
    main()
