# Students -> metrics JSON (STS + alignment/uniformity; SentEval transfer tasks for the cells that need them).


rule evaluate_sts:
    input:
        model=f"results/students/{CELL}/seed~{{seed}}/model",
        senteval=SENTEVAL,
    output:
        f"results/metrics/{CELL}/seed~{{seed}}.sts.json",
    log:
        f"logs/evaluate/{CELL}/seed~{{seed}}.sts.log",
    benchmark:
        f"results/benchmarks/evaluate/{CELL}/seed~{{seed}}.sts.tsv"
    params:
        cell=cell_args,
        pooling=config["train"]["pooling"],
        batch_size=config["evaluate"]["batch_size"],
        code=EVAL_CODE,
    threads: 2
    resources:
        gpu=1,
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse evaluate --model {input.model:q} --pooling {params.pooling:q} --tasks sts "
        "--data {input.senteval:q} --batch-size {params.batch_size:q} --out {output:q} --cell {params.cell} "
        "2> {log:q}"


rule evaluate_transfer:
    input:
        model=f"results/students/{CELL}/seed~{{seed}}/model",
        senteval=SENTEVAL,
    output:
        f"results/metrics/{CELL}/seed~{{seed}}.transfer.json",
    log:
        f"logs/evaluate/{CELL}/seed~{{seed}}.transfer.log",
    benchmark:
        f"results/benchmarks/evaluate/{CELL}/seed~{{seed}}.transfer.tsv"
    params:
        cell=cell_args,
        pooling=config["train"]["pooling"],
        batch_size=config["evaluate"]["batch_size"],
        code=EVAL_CODE,
    threads: 2
    resources:
        gpu=1,
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse evaluate --model {input.model:q} --pooling {params.pooling:q} --tasks transfer "
        "--data {input.senteval:q} --batch-size {params.batch_size:q} --out {output:q} --cell {params.cell} "
        "2> {log:q}"
