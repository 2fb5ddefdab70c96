"""Datasets, long-tailed splits, the synthetic generator, shards, storage and streams."""
