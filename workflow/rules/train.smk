# Corpora + teacher cache -> one student per (cell, seed).


rule train:
    input:
        unpack(train_inputs),
    output:
        # The model folder's key files rather than directory(): a directory() output gets a
        # .snakemake_timestamp marker inside, and the folder must upload to the Hub as it is. The other files
        # (tokenizer, pooling config) come with them: the train stage writes and replaces the folder as a whole.
        # Its README.md (the model card) is the output of rule model_card.
        model=multiext(f"results/students/{CELL}/seed~{{seed}}/model/", "config.json", "model.safetensors", "modules.json"),
        heads=f"results/students/{CELL}/seed~{{seed}}/heads.pt",
        meta=f"results/students/{CELL}/seed~{{seed}}/run_meta.json",
        curves=f"results/students/{CELL}/seed~{{seed}}/curves.csv",
    log:
        f"logs/train/{CELL}/seed~{{seed}}.log",
    benchmark:
        f"results/benchmarks/train/{CELL}/seed~{{seed}}.tsv"
    params:
        run_config=lambda w: json.dumps(run_config(config, cell_of(w)), sort_keys=True),
        pair_args=train_pair_args,
        launcher=train_launcher(),
        out_dir=lambda w: student_dir(cell_of(w), w.seed),
        cell=cell_args,
        code=code_version("train", "embedding", "data/senteval", "teacher/cache"),
    threads: job_resources("train")["threads"]
    resources:
        gpu=config["train"]["gpus_per_job"],
        mem_mb=job_resources("train")["mem_mb"],
        runtime=job_resources("train")["runtime"],
    conda:
        "../../envs/kdmcse.yaml"
    shell:
        "{params.launcher} -m kdmcse train --run-config {params.run_config:q} --text {input.text:q} {params.pair_args} "
        "--senteval {input.senteval:q} --seed {wildcards.seed:q} --out {params.out_dir:q} --cell {params.cell} "
        "2> {log:q}"
