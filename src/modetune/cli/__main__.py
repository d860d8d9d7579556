"""``python -m modetune.cli`` (used by ``torchrun`` / ``accelerate launch -m modetune.cli``)."""

import sys

from .main import main

sys.exit(main())
