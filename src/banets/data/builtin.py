"""Importing this module registers the built-in datasets (see ``registry``)."""

# each import registers its datasets
from banets.data import cifar, digits, imagefolder, shards, tensors, text, textclass, tokens  # noqa: F401
