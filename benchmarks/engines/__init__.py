"""Helpers of bench_engines.py: the shared model files and one module per outside engine."""
