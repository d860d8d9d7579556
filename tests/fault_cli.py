"""``python tests/fault_cli.py ARGS``: the modetune command line with the fault that
``MODETUNE_TEST_FAULT`` names (``kill:5``, ``kill-save:4``, ``nan:3``, ...; tests/faults.py) passed
to ``train()`` as a callback; without it, exactly ``python -m modetune.cli ARGS``."""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from faults import FaultInjection  # noqa: E402
from modetune.cli.main import main  # noqa: E402
from modetune.train import trainer  # noqa: E402

if os.environ.get("MODETUNE_TEST_FAULT"):
    trainer.train = functools.partial(trainer.train, callbacks=[FaultInjection(os.environ["MODETUNE_TEST_FAULT"])])
sys.exit(main())
