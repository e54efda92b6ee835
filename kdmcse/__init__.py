"""kdmcse: a reproducible pipeline for KDMCSE multimodal sentence embeddings."""

__version__ = "0.1.0"
