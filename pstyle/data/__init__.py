"""Datasets: a procedural one that needs no downloads (`synth`) and image-folder loaders (`folders`)."""
