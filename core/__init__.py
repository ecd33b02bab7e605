"""tiwiz core: preprocessing, captioning, models, embeddings, the trainer, runs and the worker. Never imports textual."""

__version__ = "0.1.0"

from core.quiet import quiet_environment as _quiet_environment

_quiet_environment()  # before transformers/diffusers are imported anywhere (see core/quiet.py)
