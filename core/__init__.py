"""tiwiz core: preprocessing, captioning, models, embeddings, the trainer, runs and the worker. Never imports textual."""

__version__ = "0.1.0"
