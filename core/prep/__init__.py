"""Preparing a dataset: loading, cropping, splitting, captioning and checking images."""
