"""Datasets, decoding, batched augmentation, token-label maps and loaders."""
