# Metrics -> LaTeX/CSV tables and plots. Reads only metrics files, so it rebuilds in seconds.

# one score histogram per teacher cache and batch size that KDMCSE cells train from, thresholds marked
SCORE_STATS = score_stats_cells()
SCORE_PLOTS = [path.removesuffix(".json") + ".png" for path in SCORE_STATS]

REPORT_INPUTS = {
    "main": metrics_files(main_cells(config), "sts"),
    "margin": metrics_files(ablation_cells(config, "margin"), "sts"),
    "threshold": metrics_files(ablation_cells(config, "threshold"), "sts"),
    "transfer": metrics_files(transfer_cells(config), "transfer"),
    # not read by the report command: listed so that the histograms are made wherever the tables are
    "score_plots": SCORE_PLOTS,
}
TABLES = ["main", "transfer", "ablation_margin", "ablation_threshold"]  # + significance
PLOTS = ["align_uniform", "ablation_margin", "ablation_threshold"]
# The training curves of every trained cell, its seeds overlaid (`rule curves`), in the HTML report
CURVES_PLOTS = [f"results/plots/curves/{c.path}.{ext}" for c in all_cells(config) for ext in ("pdf", "png")]
REPORT_OUTPUTS = (
    [f"results/tables/{t}.{ext}" for t in TABLES for ext in ("tex", "csv", "html")]
    + ["results/tables/significance.csv", "results/tables/significance.html"]
    + [f"results/plots/{p}.{ext}" for p in PLOTS for ext in ("pdf", "png")]
    + CURVES_PLOTS
)
rule report:
    input:
        **REPORT_INPUTS,
        # not read here: the tables wait for every cell's curves, so `snakemake --report` finds them all
        curves=[p for p in CURVES_PLOTS if p.endswith(".png")],
    output:
        main="results/tables/main.tex",
        main_csv="results/tables/main.csv",
        main_html=report_table("main"),
        transfer="results/tables/transfer.tex",
        transfer_csv="results/tables/transfer.csv",
        transfer_html=report_table("transfer"),
        margin="results/tables/ablation_margin.tex",
        margin_csv="results/tables/ablation_margin.csv",
        margin_html=report_table("ablation_margin"),
        threshold="results/tables/ablation_threshold.tex",
        threshold_csv="results/tables/ablation_threshold.csv",
        threshold_html=report_table("ablation_threshold"),
        significance="results/tables/significance.csv",
        significance_html=report_table("significance"),
        align_uniform_pdf="results/plots/align_uniform.pdf",
        align_uniform=report_plot("align_uniform"),
        margin_plot_pdf="results/plots/ablation_margin.pdf",
        margin_plot=report_plot("ablation_margin"),
        threshold_plot_pdf="results/plots/ablation_threshold.pdf",
        threshold_plot=report_plot("ablation_threshold"),
    log:
        "logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    params:
        paper="config/paper_results.yaml",
        note=lambda w: (f"--caption-note {shlex_quote(config['report']['caption_note'])}" if config["report"]["caption_note"] else ""),
        code=code_version("report", "evaluate/metrics_io"),
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse report --main {input.main:q} --margin-ablation {input.margin:q} "
        "--threshold-ablation {input.threshold:q} --transfer {input.transfer:q} --paper {params.paper:q} "
        "--tables results/tables --plots results/plots {params.note} 2> {log:q}"


rule curves:
    input:
        curves=lambda w: [f"{student_dir(cell_of(w), s)}/curves.csv" for s in SEEDS],
    output:
        pdf=f"results/plots/curves/{CELL}.pdf",
        png=report(
            f"results/plots/curves/{CELL}.png",
            caption="../report/curves.rst",
            category="Training curves",
            subcategory="{dataset} / {backbone} / {objective}",
        ),
    log:
        f"logs/curves/{CELL}.log",
    benchmark:
        f"results/benchmarks/curves/{CELL}.tsv"
    params:
        curves=lambda w: " ".join(
            shlex_quote(f"{s}={student_dir(cell_of(w), s)}/curves.csv") for s in SEEDS
        ),
        title=lambda w: cell_of(w).path,
        stem=lambda w: f"results/plots/curves/{cell_of(w).path}",
        code=code_version("report/curves", "report/plots"),
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse report curves --curves {params.curves} --title {params.title:q} "
        "--plot {params.stem:q} 2> {log:q}"
# One model card per student, in its model folder (so the folder uploads to the Hub as it is). It reads the
# student's STS metrics, hence lives after evaluation; it owns only model/README.md.
MODEL_CARDS = [f"{student_dir(c, s)}/model/README.md" for c in all_cells(config) for s in SEEDS]


rule model_card:
    input:
        meta=f"results/students/{CELL}/seed~{{seed}}/run_meta.json",
        metrics=f"results/metrics/{CELL}/seed~{{seed}}.sts.json",
    output:
        f"results/students/{CELL}/seed~{{seed}}/model/README.md",
    log:
        f"logs/model_card/{CELL}/seed~{{seed}}.log",
    benchmark:
        f"results/benchmarks/model_card/{CELL}/seed~{{seed}}.tsv"
    params:
        facts=card_facts,
        code=code_version("report/model_card", "report/render", "evaluate/metrics_io"),
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse report card --run-meta {input.meta:q} --metrics {input.metrics:q} "
        "--facts {params.facts:q} --out {output:q} 2> {log:q}"


# Optional: the MTEB table of the main cells (rule evaluate_mteb), beside the paper tables.
rule report_mteb:
    input:
        metrics_files(main_cells(config), "mteb"),
    output:
        tex="results/tables/mteb.tex",
        csv="results/tables/mteb.csv",
        html=report("results/tables/mteb.html", caption="../report/mteb.rst", category="Tables"),
    log:
        "logs/report_mteb.log",
    benchmark:
        "results/benchmarks/report_mteb.tsv"
    params:
        note=lambda w: (f"--caption-note {shlex_quote(config['report']['caption_note'])}" if config["report"]["caption_note"] else ""),
        code=code_version("report", "evaluate/metrics_io"),
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse report mteb --metrics {input:q} --tables results/tables {params.note} 2> {log:q}"


# The scale experiment: the same student configuration on caption sets of growing size (grid.scale).
SCALE_CELLS = scale_cells(config)


rule report_scale:
    input:
        metrics=metrics_files(SCALE_CELLS, "sts"),
        corpora=[f"results/corpora/captions_{config['datasets'][c.dataset]['pairs']}.parquet" for c in SCALE_CELLS],
    output:
        table="results/tables/scale.tex",
        table_csv="results/tables/scale.csv",
        table_html=report("results/tables/scale.html", caption="../report/scale.rst", category="Tables"),
        plot_pdf="results/plots/scale.pdf",
        plot=report_plot("scale", caption="../report/scale.rst"),
    log:
        "logs/report_scale.log",
    benchmark:
        "results/benchmarks/report_scale.tsv"
    params:
        corpora=lambda w: " ".join(
            shlex_quote(f"{c.dataset}=results/corpora/captions_{config['datasets'][c.dataset]['pairs']}.parquet")
            for c in SCALE_CELLS
        ),
        note=lambda w: (f"--caption-note {shlex_quote(config['report']['caption_note'])}" if config["report"]["caption_note"] else ""),
        code=code_version("report", "evaluate/metrics_io"),
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse report scale --metrics {input.metrics:q} --corpus {params.corpora} "
        "--tables results/tables --plots results/plots {params.note} 2> {log:q}"


rule score_plot:
    input:
        "results/teacher/{pairs}/{teacher}/scores/batch~{batch}.json",
    output:
        pdf="results/teacher/{pairs}/{teacher}/scores/batch~{batch}.pdf",
        png=report("results/teacher/{pairs}/{teacher}/scores/batch~{batch}.png", caption="../report/score_plot.rst",
                   category="Plots"),
    log:
        "logs/report/scores/{pairs}/{teacher}.batch~{batch}.log",
    benchmark:
        "results/benchmarks/report/scores/{pairs}/{teacher}.batch~{batch}.tsv"
    params:
        space=config["train"]["threshold_space"],
        thresholds=score_plot_thresholds,
        stem=lambda w: f"results/teacher/{w.pairs}/{w.teacher}/scores/batch~{w.batch}",
        note=lambda w: (f"--caption-note {shlex_quote(config['report']['caption_note'])}" if config["report"]["caption_note"] else ""),
        code=code_version("report", "teacher/scores"),
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse report scores --stats {input:q} --space {params.space:q} --threshold {params.thresholds} "
        "--out-stem {params.stem:q} {params.note} 2> {log:q}"
