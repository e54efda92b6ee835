"""Data stage: sources → downloads → extracted archives → tidy corpora.

Reads the source registry (`config/sources.yaml`), a mirror folder or URL, and the raw files it names
(Wiki1M, senteval.tar, the Flickr30k/COCO archives, the CC12M URL list). Writes `resources/downloads/…`,
`resources/extracted/…`, webdataset shards with their manifest `resources/shards/<name>{/,.json}`, and the corpora
`results/corpora/wiki.parquet` and `results/corpora/captions_<name>.parquet`.

    python -m kdmcse download --source KEY --registry config/sources.yaml --dest FILE   (download.py)
    python -m kdmcse extract --archive FILE --dest DIR                                   (archive.py)
    python -m kdmcse shards --manifest FILE (--tsv FILE --out-dir DIR | --from DIR)       (fetch_shards.py)
    python -m kdmcse prepare wiki|captions …                                             (prepare.py)

`senteval.py` reads the SentEval file layouts (for the evaluate stage and for training-time selection);
`demo_images.py` writes the demo photos that ship inside installed packages; `shards.py` reads webdataset
shards in place (caption tables that name shard and member). The download is split into
`registry.py` (the registry's entries), `transfer.py` (bytes into a `.part` file, resumed conditionally),
`hub.py` (the sha256 the Hugging Face Hub publishes) and `lockfile.py` (the sources lock file, per-target
locks); `archive_tree.py` resolves archive members through the links the archive creates.
"""
