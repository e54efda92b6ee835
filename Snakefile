# kdmcse: one command from raw data to the paper's tables.
#   snakemake --cores all results/tables/main.tex           # the paper grid (config/config.yaml)
#   snakemake --cores all --configfile config/demo.yaml     # the small demo
#   snakemake --cores all results/tables/scale.tex          # the scale experiment (wiki+flickr/coco/cc1m)
# Stages (one file each under workflow/rules/): data -> teacher -> train -> evaluate -> report.
# Every rule calls `python -m kdmcse <stage>`; the library never imports Snakemake.

from snakemake.utils import min_version

# 9.19: the first release that reads the profiles/*/profile.yaml files (keep in step with pyproject.toml)
min_version("9.19")


configfile: "config/config.yaml"


# The description that opens `snakemake --report` (the tables and plots carry their own captions).
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Downloads and tables need the network or the whole metrics set (and tables are cheap): run them on the
# submit host. `shards` is img2dataset's download of the image-caption pairs.
localrules:
    all,
    download,
    shards,
    report,
    report_scale,
    curves,
    score_plot,
    model_card,
    report_mteb,


rule all:
    default_target: True
    input:
        REPORT_OUTPUTS,
        MODEL_CARDS,
