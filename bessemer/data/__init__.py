"""Data path: read corpora, tokenize into indexed datasets, pack and blend them for training."""
