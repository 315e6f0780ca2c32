"""Data: in-memory tensor batches, the demo digits, CIFAR archives, text corpora, batched augmentation."""
