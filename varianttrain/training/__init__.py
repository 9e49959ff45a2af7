"""Training system: run config, the VARiant supernet LightningModule, the subnet schedule, callbacks and the runner.

Entry point: `train.py --config configs/supernet_d30.yaml` (see docs/TRAINING.md).
"""
