"""Training system: run config, the VARiant supernet LightningModule, the subnet schedule, callbacks, the task table
of the supernet tasks and the runner. It builds on models/, data/ and checkpoints/, never on the demo.

Entry point: `train.py --config configs/supernet_d30.yaml` (see docs/TRAINING.md).
"""
