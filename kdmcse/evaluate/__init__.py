"""Evaluate stage: a student → metrics JSON (STS12–16, STS-B, SICK-R, alignment/uniformity, transfer tasks).

Reads a model folder (or hub id) and the extracted SentEval data. Writes
`results/metrics/<cell>/seed~N.{sts,transfer}.json` (and optionally a one-row CSV).

    python -m kdmcse evaluate --model DIR --pooling cls_before_pooler --tasks sts|transfer --data DIR --out FILE   (cli.py)

One evaluator per task family: `sts.py` (unsupervised STS), `geometry.py` (alignment/uniformity) and
`transfer.py` (SentEval transfer tasks, with the logistic-regression probes of `linear_probe.py`).
`encoder.py` loads a saved student as a sentence encoder; `metrics_io.py` reads metrics files back for the report.
"""
