"""Data layer: ImageNet/demo pipelines (webdataset shards, ImageFolder, VQ indices) and the Lightning DataModule."""
