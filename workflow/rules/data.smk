# Sources -> downloads -> extracted archives -> tidy corpora (Parquet).


rule download:
    output:
        "resources/downloads/{artifact}/{filename}",
    log:
        "logs/download/{artifact}/{filename}.log",
    benchmark:
        "results/benchmarks/download/{artifact}/{filename}.tsv"
    params:
        registry=config["sources"]["registry"],
        extra=download_args,
    retries: 2
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse download --source {wildcards.artifact:q} --registry {params.registry:q} "
        "--dest {output:q} --lock resources/sources.lock.json {params.extra} 2> {log:q}"


rule extract:
    input:
        lambda w: download_path(w.artifact),
    output:
        directory("resources/extracted/{artifact}"),
    log:
        "logs/extract/{artifact}.log",
    benchmark:
        "results/benchmarks/extract/{artifact}.tsv"
    params:
        limit=extract_args,
    threads: job_resources("extract")["threads"]
    resources:
        mem_mb=job_resources("extract")["mem_mb"],
        runtime=job_resources("extract")["runtime"],
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse extract --archive {input:q} --dest {output:q} {params.limit} 2> {log:q}"


rule shards:
    input:
        unpack(shards_inputs),
    output:
        "resources/shards/{pairs}.json",
    log:
        "logs/shards/{pairs}.log",
    benchmark:
        "results/benchmarks/shards/{pairs}.tsv"
    params:
        args=lambda w, input: shards_args(w, input),
    threads: shard_processes
    conda:
        "../../envs/shards.yaml"
    shell:
        # the shards themselves go to resources/shards/{pairs}/ (not a declared output: a failed or killed job
        # keeps its finished shards and resumes from them)
        "python -m kdmcse shards --manifest {output:q} {params.args} 2> {log:q}"


rule prepare_wiki:
    input:
        download_path(config["wiki"]["source"]),
    output:
        "results/corpora/wiki.parquet",
    log:
        "logs/prepare/wiki.log",
    benchmark:
        "results/benchmarks/prepare/wiki.tsv"
    params:
        args=lambda w: (
            f"--max-lines {shlex_quote(config['wiki']['max_lines'])}" if config["wiki"]["max_lines"] else ""
        ),
    threads: job_resources("prepare")["threads"]
    resources:
        mem_mb=job_resources("prepare")["mem_mb"],
        runtime=job_resources("prepare")["runtime"],
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse prepare wiki --input {input:q} --out {output:q} {params.args} 2> {log:q}"


rule prepare_captions:
    input:
        unpack(captions_inputs),
    output:
        "results/corpora/captions_{pairs}.parquet",
    log:
        "logs/prepare/captions_{pairs}.log",
    benchmark:
        "results/benchmarks/prepare/captions_{pairs}.tsv"
    params:
        args=lambda w, input: prepare_captions_args(w, input),
        spec=lambda w: json.dumps(caption_corpus(w.pairs), sort_keys=True),
    threads: job_resources("prepare")["threads"]
    resources:
        mem_mb=job_resources("prepare")["mem_mb"],
        runtime=job_resources("prepare")["runtime"],
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse prepare captions {params.args} --out {output:q} 2> {log:q}"
