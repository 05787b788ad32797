"""``python -m conserviz_utils.sample``: see :mod:`conserviz_utils.sample.cli`."""

from conserviz_utils.sample.cli import main

# Guarded: "spawn" worker processes import this module again (as "__mp_main__").
if __name__ == "__main__":
    main()
