"""Importing this module registers the built-in datasets (see ``registry``)."""

from banets.data import cifar, digits, imagefolder, tensors, text, tokens  # noqa: F401  (each import registers its datasets)
