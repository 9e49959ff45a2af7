"""Data layer: real image data (webdataset shards, ImageFolder, pre-tokenised VQ indices), the resumable map-style
loader and the Lightning DataModule. The demo's generated data set lives in `varianttrain.demo.dataset`."""
