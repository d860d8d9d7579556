"""Training: `TrainConfig` (config), the Trainer and `train()` (trainer), run summaries and plots
(summary), parameter accounting (params) and teacher-forced validation (validation). ``train()``
takes ``callbacks``; the tests' fault injection is one (tests/faults.py), not part of the package.

Import from the submodules; this package module stays empty so that reading a config does not
import the Trainer.
"""
