# Caption corpora -> frozen CLIP teacher embeddings of every image and caption (Parquet cache).


rule teacher:
    input:
        unpack(teacher_inputs),
    output:
        images="results/teacher/{pairs}/{teacher}/images.parquet",
        captions="results/teacher/{pairs}/{teacher}/captions.parquet",
    log:
        "logs/teacher/{pairs}/{teacher}.log",
    benchmark:
        "results/benchmarks/teacher/{pairs}/{teacher}.tsv"
    params:
        args=teacher_args,
        out_dir=lambda w: f"results/teacher/{w.pairs}/{w.teacher}",
        # a custom architecture's config file is an input by content: editing it rebuilds the cache
        model_config_sha256=lambda w: teacher_model_config_sha256(w.teacher),
        code=code_version("teacher"),
    # JPEG decoding feeds the GPU: the stage runs one decode worker per thread but one (capped by --cores)
    threads: job_resources("teacher")["threads"]
    resources:
        gpu=1,
        mem_mb=job_resources("teacher")["mem_mb"],
        runtime=job_resources("teacher")["runtime"],
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        # own device: CUDA_VISIBLE_DEVICES from `kdmcse gpus` locally, from the scheduler under SLURM
        "python -m kdmcse gpus --count 1 -- "
        "python -m kdmcse teacher --captions {input.captions:q} --out-dir {params.out_dir:q} "
        "--threads {threads} {params.args} 2> {log:q}"


# The distribution of the scores the threshold mask compares, at a training batch size: resolves quantile
# thresholds ("q0.99") and tells what share of negatives a threshold drops (kdmcse/teacher/scores.py).
rule teacher_scores:
    input:
        images="results/teacher/{pairs}/{teacher}/images.parquet",
        captions="results/teacher/{pairs}/{teacher}/captions.parquet",
    output:
        "results/teacher/{pairs}/{teacher}/scores/batch~{batch}.json",
    log:
        "logs/teacher/{pairs}/{teacher}.scores.batch~{batch}.log",
    benchmark:
        "results/benchmarks/teacher/{pairs}/{teacher}.scores.batch~{batch}.tsv"
    params:
        cache=lambda w: f"results/teacher/{w.pairs}/{w.teacher}",
        batches=config["score_stats"]["batches"],
        seed=config["score_stats"]["seed"],
        code=code_version("teacher/scores", "teacher/cache"),
    threads: 1
    resources:
        mem_mb=job_resources("prepare")["mem_mb"],
        runtime=job_resources("prepare")["runtime"],
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse teacher scores --cache {params.cache:q} --batch-size {wildcards.batch:q} "
        "--batches {params.batches:q} --seed {params.seed:q} --out {output:q} 2> {log:q}"
