# Students -> metrics JSON (STS + alignment/uniformity; SentEval transfer tasks for the cells that need them).


rule evaluate_sts:
    input:
        model=f"results/students/{CELL}/seed~{{seed}}/model/model.safetensors",
        # what training recorded (the settled threshold, the measured mask rates) goes into the metrics
        meta=f"results/students/{CELL}/seed~{{seed}}/run_meta.json",
        senteval=SENTEVAL,
    output:
        f"results/metrics/{CELL}/seed~{{seed}}.sts.json",
    log:
        f"logs/evaluate/{CELL}/seed~{{seed}}.sts.log",
    benchmark:
        f"results/benchmarks/evaluate/{CELL}/seed~{{seed}}.sts.tsv"
    params:
        model=lambda w: f"{student_dir(cell_of(w), w.seed)}/model",
        cell=cell_args,
        pooling=config["train"]["pooling"],
        batch_size=config["evaluate"]["batch_size"],
        sts_tasks=",".join(config["evaluate"]["sts_tasks"]),
        code=EVAL_CODE,
    threads: job_resources("evaluate_sts")["threads"]
    resources:
        gpu=1,
        mem_mb=job_resources("evaluate_sts")["mem_mb"],
        runtime=job_resources("evaluate_sts")["runtime"],
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        # own device: CUDA_VISIBLE_DEVICES from `kdmcse gpus` locally, from the scheduler under SLURM
        "python -m kdmcse gpus --count 1 -- "
        "python -m kdmcse evaluate --model {params.model:q} --pooling {params.pooling:q} --tasks sts "
        "--data {input.senteval:q} --batch-size {params.batch_size:q} --out {output:q} --cell {params.cell} "
        "--run-meta {input.meta:q} --sts-tasks {params.sts_tasks:q} "
        "2> {log:q}"


rule evaluate_transfer:
    input:
        model=f"results/students/{CELL}/seed~{{seed}}/model/model.safetensors",
        senteval=SENTEVAL,
    output:
        f"results/metrics/{CELL}/seed~{{seed}}.transfer.json",
    log:
        f"logs/evaluate/{CELL}/seed~{{seed}}.transfer.log",
    benchmark:
        f"results/benchmarks/evaluate/{CELL}/seed~{{seed}}.transfer.tsv"
    params:
        model=lambda w: f"{student_dir(cell_of(w), w.seed)}/model",
        cell=cell_args,
        pooling=config["train"]["pooling"],
        batch_size=config["evaluate"]["batch_size"],
        code=EVAL_CODE,
    threads: job_resources("evaluate_transfer")["threads"]
    resources:
        gpu=1,
        mem_mb=job_resources("evaluate_transfer")["mem_mb"],
        runtime=job_resources("evaluate_transfer")["runtime"],
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        # own device: CUDA_VISIBLE_DEVICES from `kdmcse gpus` locally, from the scheduler under SLURM
        "python -m kdmcse gpus --count 1 -- "
        "python -m kdmcse evaluate --model {params.model:q} --pooling {params.pooling:q} --tasks transfer "
        "--data {input.senteval:q} --batch-size {params.batch_size:q} --out {output:q} --cell {params.cell} "
        "2> {log:q}"


# Optional (target results/tables/mteb.tex, extra [mteb]): MTEB tasks (evaluate.mteb_tasks) on the same embedding.
rule evaluate_mteb:
    input:
        model=f"results/students/{CELL}/seed~{{seed}}/model/model.safetensors",
        senteval=SENTEVAL,
    output:
        f"results/metrics/{CELL}/seed~{{seed}}.mteb.json",
    log:
        f"logs/evaluate/{CELL}/seed~{{seed}}.mteb.log",
    benchmark:
        f"results/benchmarks/evaluate/{CELL}/seed~{{seed}}.mteb.tsv"
    params:
        model=lambda w: f"{student_dir(cell_of(w), w.seed)}/model",
        tasks=",".join(config["evaluate"]["mteb_tasks"]),
        cell=cell_args,
        pooling=config["train"]["pooling"],
        batch_size=config["evaluate"]["batch_size"],
        code=code_version("evaluate", "embedding", "data/senteval"),
    threads: job_resources("evaluate_sts")["threads"]
    resources:
        gpu=1,
        mem_mb=job_resources("evaluate_sts")["mem_mb"],
        runtime=job_resources("evaluate_sts")["runtime"],
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse gpus --count 1 -- "
        "python -m kdmcse mteb --model {params.model:q} --pooling {params.pooling:q} --tasks {params.tasks:q} "
        "--senteval {input.senteval:q} --batch-size {params.batch_size:q} --out {output:q} --cell {params.cell} "
        "2> {log:q}"
