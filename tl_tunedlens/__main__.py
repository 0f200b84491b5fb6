"""``python -m tl_tunedlens``: the command line (see :mod:`tl_tunedlens.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":  # importing the module (e.g. the docs' API listing) runs nothing
    sys.exit(main())
