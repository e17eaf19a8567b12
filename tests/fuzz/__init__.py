"""Robustness tests fed with generated bad files (``generate.py``, shared with benchmarks/fuzz.py)."""
