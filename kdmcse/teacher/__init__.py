"""Teacher stage: caption table → frozen CLIP embeddings of every image and caption (the teacher cache).

Reads `results/corpora/captions_<name>.parquet` and the image files (or webdataset shards) it lists. Writes
`results/teacher/<name>/<teacher>/{images,captions}.parquet` (unnormalised embeddings, with memory-mappable
siblings and metadata).

    python -m kdmcse teacher --captions FILE --out-dir DIR --model ViT-L-14 --pretrained openai   (run.py)

`model.py` loads the open_clip model, `images.py` and `captions.py` encode each modality in resumable chunks
(`work.py`), `shards.py` streams the images of a shard table straight from its tar shards (resuming per shard), and `cache.py` writes and opens the cache (training reads it through `open_teacher_cache`).
"""
