"""`python -m kdmcse report`: the paper's tables and plots, rebuilt from metrics JSON files only.

`python -m kdmcse report scale …` writes the scale experiment's table and plot instead (`kdmcse.report.scale`),
`python -m kdmcse report scores …` the score histogram of a teacher cache (`kdmcse.report.score_plot`),
`python -m kdmcse report curves …` the training curves of one cell (`kdmcse.report.curves`), and
`python -m kdmcse report card …` one student's model card (`kdmcse.report.model_card`).

Every input is read and checked before anything is written, so a bad file leaves the previous outputs intact;
each output is then written atomically.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kdmcse.evaluate.metrics_io import read_metrics_group
from kdmcse.report.paper_results import load_paper_results
from kdmcse.report.plots import plot_ablation, plot_align_uniform, save_figure
from kdmcse.report.render import significance_frame, write_frame_with_html, write_table
from kdmcse.report.tables import build_ablation_table, build_main_table, build_transfer_table

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse report", description=__doc__.splitlines()[0])
    group = "metrics JSON files (from `evaluate`); may be empty or omitted"
    p.add_argument("--main", nargs="*", default=[], metavar="FILE", help=f"main STS table: {group}")
    p.add_argument("--margin-ablation", nargs="*", default=[], metavar="FILE", help=f"margin ablation: {group}")
    p.add_argument("--threshold-ablation", nargs="*", default=[], metavar="FILE",
                   help=f"threshold ablation: {group}")
    p.add_argument("--transfer", nargs="*", default=[], metavar="FILE", help=f"transfer table: {group}")
    p.add_argument("--paper", default=None, metavar="YAML",
                   help="reported numbers to put beside ours (config/paper_results.yaml)")
    p.add_argument("--tables", required=True, type=Path, metavar="DIR", help="folder for the .tex/.csv tables")
    p.add_argument("--plots", required=True, type=Path, metavar="DIR", help="folder for the .pdf/.png plots")
    p.add_argument("--caption-note", default="", metavar="TEXT",
                   help="appended to every table caption and plot title")
    return p


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "scale":  # `report scale …`: the scale experiment's own table and plot
        from kdmcse.report.scale import main as scale_main

        return scale_main(argv[1:])
    if argv and argv[0] == "curves":  # `report curves …`: one cell's training curves (`kdmcse.report.curves`)
        from kdmcse.report.curves import main as curves_main

        return curves_main(argv[1:])
    if argv and argv[0] == "scores":  # `report scores …`: a teacher cache's score histogram with the thresholds
        from kdmcse.report.score_plot import main as scores_main

        return scores_main(argv[1:])
    if argv and argv[0] == "mteb":  # `report mteb …`: the MTEB table (`kdmcse.report.mteb_table`)
        from kdmcse.report.mteb_table import main as mteb_main

        return mteb_main(argv[1:])
    if argv and argv[0] == "card":  # `report card …`: one student's model card (`kdmcse.report.model_card`)
        from kdmcse.report.model_card import main as card_main

        return card_main(argv[1:])
    args = build_parser().parse_args(argv)
    note = args.caption_note.strip()
    # Read and validate everything first.
    paper = load_paper_results(args.paper)
    main_recs = read_metrics_group(args.main, require="sts")
    margin_recs = read_metrics_group(args.margin_ablation, require="sts")
    threshold_recs = read_metrics_group(args.threshold_ablation, require="sts")
    transfer_recs = read_metrics_group(args.transfer, require="transfer")
    log.info("metrics files: main %d, margin %d, threshold %d, transfer %d", len(main_recs), len(margin_recs),
             len(threshold_recs), len(transfer_recs))

    main_keys = {r.config for r in main_recs}
    main_table = build_main_table(main_recs, paper, note)
    tables = [
        main_table,
        build_transfer_table(transfer_recs, paper, note),
        build_ablation_table(margin_recs, "margin", main_keys, note),
        build_ablation_table(threshold_recs, "threshold", main_keys, note),
    ]
    plots = {
        "align_uniform": plot_align_uniform(main_recs, note),
        "ablation_margin": plot_ablation(margin_recs, "margin", note),
        "ablation_threshold": plot_ablation(threshold_recs, "threshold", note),
    }

    written = []
    for table in tables:
        written += write_table(table, args.tables)
    sig = args.tables / "significance.csv"
    sig_frame = significance_frame(main_table.extras.get("significance", []))
    written += write_frame_with_html(sig, sig_frame, "Paired significance tests: KDMCSE against MCSE")
    for stem, result in plots.items():
        written += save_figure(result.figure, args.plots / stem)
    for path in written:
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
