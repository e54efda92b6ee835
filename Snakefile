# kdmcse: one command from raw data to the paper's tables.
#   snakemake --cores all results/tables/main.tex           # the paper grid (config/config.yaml)
#   snakemake --cores all --configfile config/demo.yaml     # the small demo
# Stages (one file each under workflow/rules/): data -> teacher -> train -> evaluate -> report.
# Every rule calls `python -m kdmcse <stage>`; the library never imports Snakemake.

from snakemake.utils import min_version

# 9.19: the first release that reads the profiles/*/profile.yaml files (keep in step with pyproject.toml)
min_version("9.19")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Downloads and tables are cheap and need the network or the whole metrics set: run them on the submit host.
localrules:
    all,
    download,
    report,


rule all:
    default_target: True
    input:
        REPORT_OUTPUTS,
