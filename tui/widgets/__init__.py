"""Widgets of the wizard: image preview, loss plot, run header."""
