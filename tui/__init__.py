"""The Textual wizard. Never imports torch, diffusers or transformers: heavy work runs in the worker or helper subprocesses."""
