"""``python tests/fault_cli.py ARGS``: the modetune command line with the fault that
``MODETUNE_TEST_FAULT`` names (``kill:5``, ``kill-save:4``, ``nan:3``, ...; tests/faults.py) passed
to ``train()`` as a callback, or, for ``eval-...`` faults, patched into the evaluation
(``install_eval_fault``); without it, exactly ``python -m modetune.cli ARGS``."""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from faults import FaultInjection, install_eval_fault  # noqa: E402
from modetune.cli.main import main  # noqa: E402

FAULT = os.environ.get("MODETUNE_TEST_FAULT")
if FAULT and FAULT.startswith("eval-"):
    install_eval_fault(FAULT)
elif FAULT:
    from modetune.train import trainer

    trainer.train = functools.partial(trainer.train, callbacks=[FaultInjection(FAULT)])
sys.exit(main())
