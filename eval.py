"""Evaluate VAR / VARiant and the accelerators side by side: samples, FID / IS, latency, report.

    python eval.py --config configs/eval_d30.yaml --depth 8 --mode all
    torchrun --nproc_per_node 8 eval.py --config configs/eval_d30.yaml --depth 8 --mode depthvar
    python eval.py --config configs/eval_tiny.yaml --set generation.batch_size=4 --no-fid

Flags are shorthands for config keys (shown in --help); ``--set key=value`` sets any key and is applied last.
See docs/EVALUATION.md.
"""

from __future__ import annotations

import argparse
import json
import sys

# (flag, config key, type, help)
FLAGS = [
    ("--depth", "budget.depth", int, "compute budget: a VARiant subnet of this many blocks (default: full depth)"),
    ("--mode", "methods", str, "method name, comma list, or 'all'"),
    ("--reference-scale", "budget.reference_scale", int, "DepthVAR's R override (last full-depth scale)"),
    ("--inception-weights", "metrics.inception_weights", str, "weights-inception-2015-12-05-6726825d.pth"),
    ("--ref-stats", "metrics.ref_stats", str, "VIRTUAL_imagenet256_labeled.npz (or any npz with mu, sigma)"),
    ("--samples-per-class", "generation.samples_per_class", int, "default 50"),
    ("--num-classes", "generation.num_classes", int, "first N classes (default: all of the model's)"),
    ("--out", "out_dir", str, "output folder (samples, results, report)"),
    ("--var", "model.var", str, "VAR checkpoint or export"),
    ("--vqvae", "model.vqvae", str, "VQVAE checkpoint (vae_ch160v4096z32.pth)"),
    ("--protocol", "sampling.protocol", str, "official (top-k 900) or code (CoDe / VARiant: top-k 600, T 1.1)"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (varianttrain.evaluation.config.EvalConfig)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    for flag, key, typ, text in FLAGS:
        parser.add_argument(flag, type=typ, default=None, help=f"{text} [{key}]")
    parser.add_argument("--cost-only", action="store_true", help="timing only: no samples, no metrics [cost_only]")
    parser.add_argument("--no-fid", action="store_true", help="samples and timing, no FID / IS [metrics.enabled]")
    parser.add_argument("--overwrite", action="store_true", help="replace report.* instead of writing report-2.*")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from varianttrain.config_io import ConfigError
    from varianttrain.evaluation.generation import ManifestMismatch
    from varianttrain.evaluation.runner import EvalInputError, build_config, run

    overrides = []
    for flag, key, _typ, _help in FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:  # JSON is YAML: quoted strings survive any character; --mode becomes a list
            overrides.append(f"{key}={json.dumps([value] if key == 'methods' else value)}")
    overrides += [f"{k}=true" for k, on in (("cost_only", args.cost_only), ("overwrite", args.overwrite)) if on]
    overrides += ["metrics.enabled=false"] if args.no_fid else []
    try:
        cfg = build_config(args.config, overrides + args.set)
        run(cfg)
    except (ConfigError, EvalInputError, FileNotFoundError, ManifestMismatch, KeyError) as err:
        print(f"eval.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
