# Sources -> downloads -> extracted archives -> tidy corpora (Parquet).


def download_args(w):
    """Mirror and per-artifact overrides from config.sources, as command-line flags."""
    src = config["sources"]
    args = []
    if src.get("mirror"):
        args += ["--mirror", src["mirror"]]
    over = src.get("overrides", {}).get(w.artifact, {})
    for key in ("path", "url", "sha256"):
        if over.get(key):
            args += [f"--override-{key}", over[key]]
    return " ".join(map(shlex_quote, args))


def shlex_quote(s):
    import shlex

    return shlex.quote(str(s))


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
    shell:
        "python -m kdmcse download --source {wildcards.artifact} --registry {params.registry} "
        "--dest {output} --lock resources/sources.lock.json {params.extra} 2> {log}"


rule extract:
    input:
        lambda w: download_path(w.artifact),
    output:
        directory("resources/extracted/{artifact}"),
    log:
        "logs/extract/{artifact}.log",
    benchmark:
        "results/benchmarks/extract/{artifact}.tsv"
    shell:
        "python -m kdmcse extract --archive {input} --dest {output} 2> {log}"


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
        max_lines=lambda w: (
            f"--max-lines {config['wiki']['max_lines']}" if config["wiki"]["max_lines"] else ""
        ),
    shell:
        "python -m kdmcse prepare wiki --input {input} --out {output} {params.max_lines} 2> {log}"


def caption_corpus(name):
    if name not in config["captions"]:
        raise ValueError(f"caption corpus {name!r} is not defined under config key 'captions'")
    return config["captions"][name]


def captions_inputs(w):
    cap = caption_corpus(w.pairs)
    if cap["format"] == "demo":
        return {}
    return {"annotations": download_path(cap["annotations"]), "images": extracted(cap["images"])}


def images_dir(name):
    cap = caption_corpus(name)
    if cap["format"] == "demo":
        # The demo photos are written by the prepare step itself (they ship inside installed packages).
        return f"resources/images/{name}"
    sub = cap.get("images_subdir", "")
    return f"{extracted(cap['images'])}/{sub}".rstrip("/")


def prepare_captions_args(w, input):
    cap = caption_corpus(w.pairs)
    args = ["--dataset", cap["format"], "--images-dir", images_dir(w.pairs)]
    if cap["format"] != "demo":
        args += ["--input", input.annotations]
    if cap.get("one_caption_per_image"):
        args += ["--one-caption-per-image"]
    if cap.get("max_images"):
        args += ["--max-images", str(cap["max_images"])]
    return " ".join(map(shlex_quote, args))


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
    shell:
        "python -m kdmcse prepare captions {params.args} --out {output} 2> {log}"
