"""The paper's studies as one command each: `modetune experiment STUDY [--smoke] [--config X.yaml]`.

plan (ExperimentConfig, built on TrainConfig, and each study's runs), run (train, validate and
evaluate each run, resumably), report (report.md: tables, statistics, plots). The dense vs Top-K
wall-clock benchmark is ``benchmarks/bench_topk.py``; the topk study's report includes its table
when it was measured into the study folder.
"""
