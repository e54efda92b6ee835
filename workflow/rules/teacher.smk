# Caption corpora -> frozen CLIP teacher embeddings of every image and caption (Parquet cache).


def teacher_spec(name):
    if name not in config["teachers"]:
        raise ValueError(f"teacher {name!r} is not defined under config key 'teachers'")
    return config["teachers"][name]


def teacher_inputs(w):
    inputs = {"captions": f"results/corpora/captions_{w.pairs}.parquet"}
    cap = caption_corpus(w.pairs)
    if cap["format"] != "demo":
        inputs["images"] = extracted(cap["images"])
    return inputs


def teacher_args(w):
    t = teacher_spec(w.teacher)
    args = ["--model", t["model"], "--pretrained", t["pretrained"], "--precision", t.get("precision", "fp32")]
    args += ["--batch-size", str(t.get("batch_size", 256))]
    if t.get("model_config"):
        args += ["--model-config", t["model_config"]]
    if config["teacher_skip_bad_images"]:
        args += ["--skip-bad-images"]
    return " ".join(map(shlex_quote, args))


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
        code=code_version("teacher", "teacher_cache"),
    threads: 4
    resources:
        gpu=1,
    shell:
        "python -m kdmcse teacher --captions {input.captions} --out-dir {params.out_dir} "
        "--workers {threads} {params.args} 2> {log}"
