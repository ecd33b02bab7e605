"""Models: loading diffusers folders and single-file checkpoints offline, finding checkpoints, the tiny demo model.

Importing this package must stay cheap (no torch): `find` and header reading are used by the TUI process.
"""
