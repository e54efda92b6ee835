"""Train stage: corpora + teacher cache → one student per (cell, seed).

Reads `results/corpora/wiki.parquet`, for MCSE/KDMCSE also a caption table and its teacher cache, and the
SentEval folder for STS-B dev selection. Writes `results/students/<cell>/seed~N/` with `model/` (a plain
Hugging Face folder), `heads.pt`, `curves.csv` (the training curves; `tensorboard/` too when installed) and
`run_meta.json`.

    python -m kdmcse train --run-config JSON --text wiki.parquet [--pairs … --teacher …] --seed N --out DIR   (loop.py)

`run_config.py` checks the run config, `inputs.py` reads and cross-checks the data, `model.py` is the student,
`losses.py` the objectives, `mixing.py` the batch schedule, `step.py` one optimisation step, `precision.py`
fp32/tf32/bf16/fp16, `step_values.py` the per-step values read from the device every `log_every` steps,
`selection.py` STS-B dev selection, `curves.py` the training curves, `eta.py` the log's opening line and ETA,
`host.py` versions and device names, `checkpoint.py` resumable state, `checkpoint_policy.py` when it is written,
and `distributed.py` the torchrun plumbing.
"""
