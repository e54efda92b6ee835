"""Report stage: metrics JSON files → LaTeX/CSV tables and plots.

Reads only `results/metrics/**.json` and `config/paper_results.yaml` (the scale table also the caption tables'
row counts). Writes `results/tables/*.{tex,csv}`
(main, transfer, margin and threshold ablations, significance, scale) and `results/plots/*.{pdf,png}`.

    python -m kdmcse report --main FILE… --margin-ablation FILE… --threshold-ablation FILE… --transfer FILE…   (cli.py)

`tables.py` aggregates seeds and builds the tables, `render.py` writes them as LaTeX and CSV, `plots.py` draws
the figures, `significance.py` runs the paired seed tests and `paper_results.py` reads the reported numbers;
`scale.py` is `python -m kdmcse report scale`, the scale experiment's table and plot.
"""
