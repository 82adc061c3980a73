"""``python -m bioflexnet`` = the ``bioflexnet`` console script."""
import sys

from bioflexnet.cli import main

sys.exit(main())
