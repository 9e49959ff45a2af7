"""Regenerates method_indices.json: the token indices every sampling method draws on seeded tiny models.

    python tests/data/make_method_indices.py   # from the repository root; only when a change of outputs is intended

The file pins what the sampler and the methods produced when it was written, so that speed work on them can prove
its outputs bit-identical (tests/test_method_outputs.py). One thread, float32, CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # conftest's model builders

from conftest import random_tiny_var, tiny_vqvae  # noqa: E402

from varianttrain.methods.budget import DepthBudget  # noqa: E402
from varianttrain.methods.code import CoDeMethod  # noqa: E402
from varianttrain.methods.registry import build_method  # noqa: E402
from varianttrain.methods.spec import MethodOptions  # noqa: E402
from varianttrain.sampling.config import SamplingConfig  # noqa: E402
from varianttrain.sampling.rng import TokenRNG  # noqa: E402
from varianttrain.sampling.sampler import generate  # noqa: E402

PATCH_NUMS = (1, 2, 3, 4, 5, 6)
DEPTH = 6
BRIDGE = 3
LABELS = [0, 3, 1]
SEEDS = [11, 12, 13]
SAMPLINGS = {
    "topk10_topp0.9": SamplingConfig(cfg=1.5, top_k=10, top_p=0.9),
    "code_protocol": SamplingConfig(cfg=2.0, top_k=12, top_p=0.96, temperature=(1.1,) * 3),
}
# (method, budget depth, knobs): every registered method, the DepthVAR paths (ordinal and padded 'min' ties, paper
# mode, unit score) and both StageVAR branches.
CASES = [
    ("full", DEPTH, {}),
    ("variant", 2, {}),
    ("earlyexit", 2, {}),
    ("depthvar", 4, {}),
    ("depthvar", 2, {}),
    ("depthvar", 2, {"rank_ties": "min", "rank_upsample": "nearest"}),
    ("depthvar", 2, {"reference_scale": 3, "restore_threshold": -1.0, "restore_weight": "anchor"}),
    ("depthvar", 2, {"unit_score": True}),
    ("stagevar", 2, {}),
    ("stagevar", 2, {"branch": "uncond", "refine_from": 4, "rank_fraction": 0.5}),
    ("fastvar", 4, {}),
    ("fastvar", 2, {"prune_ratios": 0.6}),
]


def case_name(method: str, depth: int, knobs: dict) -> str:
    extra = ",".join(f"{k}={v}" for k, v in sorted(knobs.items()))
    return f"{method}-d{depth}" + (f"[{extra}]" if extra else "")


def models():
    var = random_tiny_var(DEPTH, PATCH_NUMS, vocab_size=32, seed=0)
    refiner = random_tiny_var(2, PATCH_NUMS, vocab_size=32, seed=5)
    return var, refiner, tiny_vqvae(PATCH_NUMS, vocab_size=32, seed=1)


def methods(var, refiner):
    """name -> method (a fresh instance per call of this function)."""
    out = {}
    for method, depth, knobs in CASES:
        budget = DepthBudget(DEPTH, PATCH_NUMS, depth, bridge_scales=BRIDGE)
        out[case_name(method, depth, knobs)] = build_method(method, var, MethodOptions(budget=budget, knobs=knobs))
    out["code-draft3"] = CoDeMethod(var, refiner, 3)
    return out


def sample_all() -> dict:
    torch.set_num_threads(1)
    var, refiner, vqvae = models()
    labels = torch.tensor(LABELS)
    result = {}
    for sname, sampling in SAMPLINGS.items():
        for name, method in methods(var, refiner).items():
            for rng_name, rng in (("per_image", TokenRNG.per_image(SEEDS)), ("shared", TokenRNG.shared_seed(7))):
                out = generate(var, vqvae, labels, sampling, rng, method=method, decode=False)
                result[f"{sname}/{name}/{rng_name}"] = [idx.tolist() for idx in out.idx_Bl]
    return result


if __name__ == "__main__":
    (HERE / "method_indices.json").write_text(json.dumps(sample_all(), separators=(",", ":")) + "\n")
