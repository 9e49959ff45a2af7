"""`python eval.py` / `varianttrain-eval`: VAR / VARiant and the accelerators side by side: samples, FID / IS with
their noise, latency, report.

    python eval.py --depth 8 --mode depthvar                    # ImageNet 256, the released VAR-d30
    torchrun --nproc_per_node 8 eval.py --depth 8 --mode all    # + the VARiant supernet and CoDe's refiner
    python eval.py --config demo/eval.yaml --depth 2 --mode all
    python eval.py --print-config --depth 8                     # the resolved config, nothing run

Without --config the ImageNet-256 VAR-d30 defaults are used (configs/eval_d30.yaml); a --config that is not a path
is looked up in configs/. Flags are shorthands for config keys (shown in --help); ``--set key=value`` sets any key
and is applied last. A run writes into <out>/<budget> (runs/eval/d8/...). Exit status: 0 done, 2 a bad config or
input (reported before anything is built or written). See docs/EVALUATION.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from varianttrain.paths import CONFIGS

DEFAULT_CONFIG = CONFIGS / "eval_d30.yaml"  # the users' command names no config: ImageNet 256, VAR-d30

# (flag, config key, type, help)
FLAGS = [
    ("--depth", "budget.depth", int, "compute budget: the FLOPs of a VARiant subnet of this many blocks "
                                      "(default: full depth)"),
    ("--mode", "methods", str, "method name, comma list, or 'all' (the methods are listed below)"),
    ("--base", "model.base", str, "the released VAR the training-free methods and CoDe's drafter run on "
                                  "(var_d30.pth)"),
    ("--supernet", "model.supernet", str, "the VARiant supernet `variant` runs on (an export or a training .ckpt)"),
    ("--refiner", "model.refiner", str, "CoDe's refiner (var_d16.pth)"),
    ("--vqvae", "model.vqvae", str, "VQVAE checkpoint (vae_ch160v4096z32.pth)"),
    ("--protocol", "sampling.protocol", str, "sampling protocol (listed below)"),
    ("--reference-scale", "budget.reference_scale", int, "DepthVAR's R override (last full-depth scale)"),
    ("--inception-weights", "metrics.inception_weights", str, "weights-inception-2015-12-05-6726825d.pth"),
    ("--ref-stats", "metrics.ref_stats", str, "VIRTUAL_imagenet256_labeled.npz (or any npz with mu, sigma)"),
    ("--samples-per-class", "generation.samples_per_class", int, "default 50"),
    ("--num-classes", "generation.num_classes", int, "the first N classes (default: all of the model's)"),
    ("--out", "out_dir", str, "output root; the run writes into <out>/d<depth> (or <out>/full)"),
]


def config_file(name: str | None) -> Path:
    """The config file: the d30 defaults without --config; a name that is not a path is looked up in configs/
    (`varianttrain.paths.resolve_config`, the rule train.py follows)."""
    from varianttrain.paths import resolve_config

    return DEFAULT_CONFIG if name is None else resolve_config(name)[0]


def epilog() -> str:
    """Methods, protocols and presets for --help."""
    from varianttrain.methods.registry import available_methods, get_method
    from varianttrain.sampling.config import SamplingConfig

    lines = ["methods (--mode; 'all' = every method whose inputs are configured):"]
    for name in available_methods():
        spec = get_method(name)
        runs = f"model.{spec.runs_on}" + "".join(f" + model.{n}" for n in spec.needs)
        lines.append(f"  {name:10s} [{runs}] {spec.help.split('; ')[0]}")
    lines.append("protocols (--protocol):")
    for name in ("official", "code"):
        s = SamplingConfig.preset(name)
        temps = sorted(set(s.temperature))
        temp = ("1.0" if not temps else f"{temps[0]} on the first {len(s.temperature)} scales, then 1.0"
                if len(temps) == 1 else f"{list(s.temperature)} per scale, then 1.0")
        lines.append(f"  {name:10s} cfg {s.cfg}, top-k {s.top_k}, top-p {s.top_p}, temperature {temp}")
    lines.append("presets (--config NAME, looked up in configs/):")
    for path in sorted(CONFIGS.glob("eval*.yaml")) + sorted(CONFIGS.glob("*/eval*.yaml")):
        first = path.read_text().splitlines()[0].lstrip("# ")
        lines.append(f"  {str(path.relative_to(CONFIGS)):18s} {first}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    wants_help = any(a in ("-h", "--help") for a in (sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="eval.py", description=__doc__, epilog=epilog() if wants_help else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (varianttrain.evaluation.config.EvalConfig); default: "
                                         "configs/eval_d30.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    for flag, key, typ, text in FLAGS:
        parser.add_argument(flag, type=typ, default=None, help=f"{text} [{key}]")
    parser.add_argument("--cost-only", action="store_true", help="timing only: no samples, no metrics [cost_only]")
    parser.add_argument("--no-fid", action="store_true", help="samples and timing, no FID / IS [metrics.enabled]")
    parser.add_argument("--overwrite", action="store_true", help="replace report.* instead of writing report-2.*")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--var", help=argparse.SUPPRESS)  # removed: explained in main()
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.var is not None:
        print("eval.py: error: --var was split into --base (the released VAR: full and the training-free methods) "
              "and --supernet (a VARiant export or training checkpoint: variant)", file=sys.stderr)
        return 2
    from varianttrain.config_io import ConfigError, to_yaml
    from varianttrain.evaluation.generation import DISK_ERRORS, ManifestMismatch, OutputWriteError
    from varianttrain.evaluation.images import UnreadableImage
    from varianttrain.evaluation.runner import EvalInputError, build_config, run

    overrides = []
    for flag, key, _typ, _help in FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:  # JSON is YAML: quoted strings survive any character; --mode becomes a list
            overrides.append(f"{key}={json.dumps([value] if key == 'methods' else value)}")
    overrides += [f"{k}=true" for k, on in (("cost_only", args.cost_only), ("overwrite", args.overwrite)) if on]
    overrides += ["metrics.enabled=false"] if args.no_fid else []
    try:
        config = config_file(args.config)
        cfg = build_config(config, overrides + args.set)
        print(f"eval.py: config {config}", file=sys.stderr)
        if args.print_config:
            print(f"# resolved from {config} and the command line; the run writes into {cfg.run_dir()}")
            print(to_yaml(cfg), end="")
            return 0
        run(cfg)
    except (ConfigError, EvalInputError, ManifestMismatch, OutputWriteError, FileNotFoundError) as err:
        print(f"eval.py: error: {err}", file=sys.stderr)
        return 2
    except UnreadableImage as err:  # a damaged sample PNG (reference images are skipped and counted instead)
        print(f"eval.py: error: {err}: delete it and rerun the same command; the run samples it again",
              file=sys.stderr)
        return 2
    except KeyError as err:  # an unknown method name; the message lists the registered ones
        print(f"eval.py: error: {err.args[0]}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        print(f"eval.py: error: {err.filename or 'output'}: {err.strerror}; free space or choose another --out",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
