"""One folder per detector: the pure ``nn.Module`` (model.py) and its training/scoring (detector.py)."""
