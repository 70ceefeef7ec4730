"""Benchmarks of the encoder and the pipelines; results land in ``bench/results/``."""
