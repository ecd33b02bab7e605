"""Models: loading diffusers folders and single-file checkpoints offline, finding checkpoints, the tiny demo model.

Importing this package must stay cheap (no torch): `find` and `headers` are used by the TUI process.
Modules: `loader` (load_model), `loaded_model` (LoadedModel), `folder_loader` / `file_loader` (diffusers
folders / single files), `single_file` (save_single_file), `find` (find_checkpoints,
inspect_checkpoint; torch-free), `headers` (safetensors headers, family detection; torch-free), `configs` (bundled
configs adapted to tensor shapes; torch-free), `convert` (original <-> diffusers keys), `device` (pick_device,
precision_for, enable_sdpa), `demo` / `tiny` (tiny test models).
"""
