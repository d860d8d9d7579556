"""Training: `TrainConfig` (config), the Trainer and `train()` (trainer), run summaries and plots
(summary), parameter accounting (params), teacher-forced validation (validation), and the
test-only fault injection (faults).

Import from the submodules; this package module stays empty so that reading a config does not
import the Trainer.
"""
