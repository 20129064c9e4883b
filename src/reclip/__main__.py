"""``python -m reclip`` (and ``torchrun -m reclip``) runs the command line."""
import sys

from .cli.main import main

sys.exit(main())
