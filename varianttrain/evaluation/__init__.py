"""Offline image-quality evaluation: Inception features, FID, IS, precision/recall and sample I/O."""
