"""Scoring at scale: streaming to files, a Ray cluster, ONNX exports."""
