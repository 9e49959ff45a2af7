"""Command-line entry points (`train.py`, `eval.py` and the `varianttrain-*` console scripts call these)."""
