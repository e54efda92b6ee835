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
        code=code_version("teacher"),
    # JPEG decoding feeds the GPU: the stage runs one decode worker per thread but one (capped by --cores)
    threads: 16
    resources:
        gpu=1,
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "python -m kdmcse teacher --captions {input.captions} --out-dir {params.out_dir} "
        "--threads {threads} {params.args} 2> {log}"
