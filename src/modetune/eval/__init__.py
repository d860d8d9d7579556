"""Evaluation on the paper's reasoning datasets (LLM-Adapters protocol) and through lm-eval.

Modules, lower layers first (each imports only those above it in this list):

- :mod:`.datasets`: the registry of datasets (names, aliases, groups, scoring kind);
- :mod:`.protocol`: answer extraction, scoring and the early-stop rule (no torch);
- :mod:`.sources`: test items from LLM-Adapters files, the built-in set or the hub;
- :mod:`.members`: ensemble members: naming them and forcing one member's routing;
- :mod:`.generation`: batched greedy (KV cache, shared prefix) and beam generation;
- :mod:`.results`: result files, run summaries, the accuracy table, solved-item sets;
- :mod:`.runner`: :class:`~.runner.EvalConfig`, model loading, runs and resuming, ``run_eval``;
- :mod:`.lm_eval`: EleutherAI lm-evaluation-harness on our model object.

Import from the modules themselves (``from modetune.eval.protocol import score_response``);
this package file imports none of them, so importing one module does not load the others.
"""
