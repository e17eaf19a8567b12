"""Pieces several detectors share: the U-Net, the median filter, intensity scaling and augmentation."""
