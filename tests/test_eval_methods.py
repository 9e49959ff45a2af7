"""Evaluation methods and work lists: FLOPs against the closed form, reductions to the full model, the registry,
per-image seeds and sharding. Tiny random VAR (depth 4, width 64, patch_nums 1..4, vocab 64, 10 classes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from varianttrain.evaluation.seeds import batches, image_seed, sample_name, shard_batches, work_list
from varianttrain.methods import registry
from varianttrain.methods.baselines import matched_early_exit
from varianttrain.methods.budget import DepthBudget, plan_flops
from varianttrain.methods.registry import build_method, register_method, resolve_methods
from varianttrain.methods.spec import MethodOptions
from varianttrain.models.depth_plan import DepthPlan, layer_subset
from varianttrain.models.flops import sampling_flops
from varianttrain.models.var import VAR, VARConfig
from varianttrain.models.vqvae import VQVAE, VQVAEConfig
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import SamplingMethod, generate

PATCH_NUMS = (1, 2, 3, 4)
DEPTH = 4


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    var = VAR(VARConfig(depth=DEPTH, embed_dim=64, num_heads=4, num_classes=10, vocab_size=64, z_channels=32,
                        patch_nums=PATCH_NUMS)).eval()
    # No init_weights(): the official init damps every block's gates to 1e-5, so skipping blocks would change
    # nothing and 'equals full' checks would pass vacuously. PyTorch's default init makes every block matter.
    vqvae = VQVAE(VQVAEConfig(vocab_size=64, z_channels=32, ch=32, patch_nums=PATCH_NUMS)).freeze()
    return var, vqvae


def _budget(depth: int, bridge: int = 2) -> DepthBudget:
    return DepthBudget(total_depth=DEPTH, patch_nums=PATCH_NUMS, depth=depth, bridge_scales=bridge,
                       depth_choices=(1, 2))


def _sample(var, vqvae, method: SamplingMethod, seeds=(3, 4, 5), labels=(1, 2, 7)):
    return generate(var, vqvae, torch.tensor(labels), SamplingConfig.official(), TokenRNG.per_image(seeds), method)


@pytest.mark.parametrize("depth,bridge", [(1, 2), (2, 2), (3, 1), (4, 2), (2, 0)])
def test_variant_flops_match_closed_form(tiny, depth, bridge):
    var, vqvae = tiny
    budget = _budget(depth, bridge)
    method = build_method("variant", var, MethodOptions(budget=budget))
    out = _sample(var, vqvae, method)
    subset = layer_subset(DEPTH, depth, "nested", (1, 2))
    per_scale = [tuple(range(DEPTH))] * bridge + [subset] * (len(PATCH_NUMS) - bridge)
    closed = sampling_flops(var.C, var.V, var.Cvae, PATCH_NUMS, per_scale, cfg=True).total
    assert out.flops == 3 * closed  # the sampler counts what ran for 3 images; the closed form is per image
    assert budget.variant_flops(var).total == closed == plan_flops(var, method.plan).total


def test_variant_at_full_depth_equals_full(tiny):
    var, vqvae = tiny
    full = _sample(var, vqvae, build_method("full", var, MethodOptions(budget=_budget(DEPTH))))
    # not vacuous: dropping blocks does change the tokens of this model
    smaller = _sample(var, vqvae, build_method("variant", var, MethodOptions(budget=_budget(2))))
    assert not all(torch.equal(a, b) for a, b in zip(full.idx_Bl, smaller.idx_Bl, strict=True))
    early = _sample(var, vqvae, build_method("earlyexit", var, MethodOptions(budget=_budget(2))))
    assert not all(torch.equal(a, b) for a, b in zip(full.idx_Bl, early.idx_Bl, strict=True))
    variant_method = build_method("variant", var, MethodOptions(budget=_budget(DEPTH)))
    assert variant_method.plan.is_full
    variant = _sample(var, vqvae, variant_method)
    assert all(torch.equal(a, b) for a, b in zip(full.idx_Bl, variant.idx_Bl, strict=True))
    assert torch.equal(full.images_B3HW, variant.images_B3HW)
    assert full.flops == variant.flops and full.kv_cache_bytes == variant.kv_cache_bytes


def test_earlyexit_at_full_depth_equals_full(tiny):
    var, vqvae = tiny
    full = _sample(var, vqvae, build_method("full", var, MethodOptions(budget=_budget(DEPTH))))
    for options in (MethodOptions(budget=_budget(DEPTH)),  # budget d = D -> matched e = D
                    MethodOptions(budget=_budget(2), knobs={"exit_after": DEPTH})):  # explicit knob
        method = build_method("earlyexit", var, options)
        assert method.plan.is_full
        out = _sample(var, vqvae, method)
        assert torch.equal(full.images_B3HW, out.images_B3HW) and full.flops == out.flops


def test_earlyexit_matches_the_budget_flops(tiny):
    var, vqvae = tiny
    for depth in range(1, DEPTH + 1):
        budget = _budget(depth)
        target = budget.variant_flops(var).total
        gaps = {e: abs(plan_flops(var, DepthPlan.early_exit(DEPTH, PATCH_NUMS, e)).total - target)
                for e in range(1, DEPTH + 1)}
        chosen = matched_early_exit(var, budget)
        assert gaps[chosen] == min(gaps.values())
        assert chosen == max(e for e, gap in gaps.items() if gap == gaps[chosen])  # ties: the larger e
        method = build_method("earlyexit", var, MethodOptions(budget=budget))
        out = _sample(var, vqvae, method, seeds=(1,), labels=(0,))
        assert out.flops == plan_flops(var, DepthPlan.early_exit(DEPTH, PATCH_NUMS, chosen)).total


def test_earlyexit_total_flops_match_closed_form(tiny):
    var, vqvae = tiny
    method = build_method("earlyexit", var, MethodOptions(budget=_budget(2), knobs={"exit_after": 2}))
    out = _sample(var, vqvae, method, seeds=(1,), labels=(0,))
    assert out.flops == plan_flops(var, DepthPlan.early_exit(DEPTH, PATCH_NUMS, 2)).total


def test_export_layer_subsets_win_and_are_checked(tiny):
    var, _ = tiny
    budget = DepthBudget(DEPTH, PATCH_NUMS, depth=2, bridge_scales=2, layer_subsets={2: (1, 2)})
    assert budget.active_blocks() == (1, 2)
    with pytest.raises(ValueError, match="layer subset for depth 2"):
        DepthBudget(DEPTH, PATCH_NUMS, depth=2, bridge_scales=2, layer_subsets={2: (0, 9)}).active_blocks()
    with pytest.raises(ValueError, match="outside 1..4"):
        DepthBudget(DEPTH, PATCH_NUMS, depth=5, bridge_scales=2)
    with pytest.raises(ValueError, match="set budget.bridge_scales"):
        DepthBudget(DEPTH, PATCH_NUMS, depth=2, bridge_scales=6)


def test_registry_register_resolve_and_errors(tiny, monkeypatch):
    var, _ = tiny
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # keep the global registry clean

    def build_toy(var, options):
        method = SamplingMethod()
        method.budget_match = options.budget.match(var, options.budget.variant_flops(var), "toy: the subnet's cost")
        return method

    register_method("toy", build_toy, help="test method")
    assert resolve_methods(["full,variant", "variant"]) == ["full", "variant"]
    assert resolve_methods(["all"])[:3] == ["full", "variant", "earlyexit"] and "toy" in resolve_methods(["all"])
    method = build_method("toy", var, MethodOptions(budget=_budget(2)))
    assert method.name == "toy"
    with pytest.raises(ValueError, match="already registered"):
        register_method("toy", lambda v, o: SamplingMethod())
    with pytest.raises(KeyError, match="registered: full, variant, earlyexit"):
        resolve_methods(["nope"])
    with pytest.raises(ValueError, match="invalid method name"):
        register_method("all", build_toy)
    with pytest.raises(ValueError, match="unknown knob"):
        build_method("earlyexit", var, MethodOptions(budget=_budget(2), knobs={"exit_at": 2}))


def test_every_method_reports_how_it_meets_the_budget(tiny, monkeypatch):
    var, _ = tiny
    budget = _budget(2)
    target = budget.variant_flops(var).total
    refiner = VAR(VARConfig(depth=2, embed_dim=32, num_heads=2, num_classes=10, vocab_size=64, z_channels=32,
                            patch_nums=PATCH_NUMS)).eval()
    for name in registry.available_methods():
        match = build_method(name, var, MethodOptions(budget=budget, refiner=refiner)).budget_match
        assert match.target_flops == target and match.note, name
        assert match.flop_ratio == match.flops.total / target
    full = build_method("full", var, MethodOptions(budget=budget)).budget_match
    assert full.flops.total == plan_flops(var, DepthPlan.full(DEPTH, PATCH_NUMS)).total and full.flop_ratio > 1
    assert build_method("variant", var, MethodOptions(budget=budget)).budget_match.flop_ratio == 1.0
    explicit = build_method("earlyexit", var, MethodOptions(budget=budget, knobs={"exit_after": 1})).budget_match
    assert "explicit exit_after=1" in explicit.note
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_method("silent", lambda v, o: SamplingMethod())  # forgets budget_match
    with pytest.raises(TypeError, match="did not set budget_match"):
        build_method("silent", var, MethodOptions(budget=budget))


@pytest.mark.parametrize("options, needles", [
    ({"depthvar": {"blend_at": "post_phi"}}, ["unknown knob(s) blend_at='post_phi'",
                                             "depthvar understands reference_scale, ref_layer_range"]),
    ({"depthvar": {"kv_fill": "proxy"}}, ["kv_fill='proxy'"]),
    ({"depthvar": {"metric": "l1"}}, ["method_options.depthvar", "metric='l1'"]),
    ({"depthvar": {"budget_match": "latency"}}, ["budget_match='latency'", "token_layers"]),
    ({"depthvar": {"unit_score": 1}}, ["unit_score=1"]),
    ({"fastvar": {"prune_ratios": 1.5}}, ["prune_ratios=1.5"]),
    ({"fastvar": {"prune_scales": [3, 4], "prune_ratios": [0.5]}}, ["prune_ratios=[0.5]"]),
    ({"fastvar": {"block_range": [5, 2]}}, ["block_range=[5, 2]"]),
    ({"fastvar": {"restore_upsample": "bicubic"}}, ["restore_upsample='bicubic'", "area"]),
    ({"stagevar": {"rank_fraction": 0}}, ["rank_fraction=0"]),
    ({"stagevar": {"branch": "both"}}, ["branch='both'", "uncond"]),
    ({"stagevar": {"ranks": [4, 0]}}, ["ranks=[4, 0]"]),
    ({"earlyexit": {"exit_after": 0}}, ["exit_after=0"]),
    ({"full": {"x": 1}}, ["full understands no knobs"]),
    ({"nope": {}}, ["unknown methods ['nope']"]),
])
def test_method_options_are_checked_without_a_model(options, needles):
    with pytest.raises(ValueError) as err:
        registry.check_method_options(options)
    for needle in needles:
        assert needle in str(err.value)


def test_method_options_report_every_problem_and_accept_good_values():
    good = {"depthvar": {"reference_scale": 3, "schedule": "linear-a", "budget_match": "flops", "unit_score": False},
            "fastvar": {"prune_scales": [2, 3], "prune_ratios": [0.1, 0.4], "block_range": [1, 2]},
            "stagevar": {"refine_from": 2, "rank_fraction": 0.5, "branch": "uncond", "seed": 3},
            "earlyexit": {"exit_after": 2}, "full": {}}
    registry.check_method_options(good)
    with pytest.raises(ValueError) as err:
        registry.check_method_options({"depthvar": {"eta": 2.0}, "stagevar": {"seed": 0.5}})
    assert "eta=2.0" in str(err.value) and "seed=0.5" in str(err.value)


def test_eval_refuses_bad_method_options_before_loading_a_model(tmp_path):
    from varianttrain.evaluation.runner import EvalInputError, build_config, run

    config = Path(__file__).resolve().parents[1] / "configs" / "eval_tiny.yaml"
    cfg = build_config(config, [f"model.base={tmp_path / 'absent.pth'}", f"out_dir={tmp_path / 'out'}",
                                "method_options.depthvar.blend_at=post_phi"])
    with pytest.raises(EvalInputError) as err:  # reported together with the missing file, before any model
        run(cfg, log=lambda msg: None)
    assert "blend_at='post_phi'" in str(err.value) and "absent.pth not found" in str(err.value)


def _tiny_eval_config(tiny, tmp_path, *overrides: str):
    from varianttrain.evaluation.runner import build_config

    var, vqvae = tiny
    torch.save(var.state_dict(), tmp_path / "var.pth")
    torch.save(vqvae.state_dict(), tmp_path / "vqvae.pth")
    config = Path(__file__).resolve().parents[1] / "configs" / "eval_tiny.yaml"
    return build_config(config, [f"model.base={tmp_path / 'var.pth'}", f"model.supernet={tmp_path / 'var.pth'}",
                                 f"model.refiner={tmp_path / 'var.pth'}", f"model.vqvae={tmp_path / 'vqvae.pth'}",
                                 f"out_dir={tmp_path / 'out'}", *overrides])


def test_eval_builds_every_method_before_sampling(tiny, tmp_path):
    from varianttrain.evaluation.runner import EvalInputError, run

    cfg = _tiny_eval_config(tiny, tmp_path, "methods=[full,fastvar]", "method_options.fastvar.block_range=[0, 9]")
    with pytest.raises(EvalInputError, match="method fastvar: .*block_range"):  # the model has blocks 0..3
        run(cfg, log=lambda msg: None)
    assert not (tmp_path / "out" / "d2" / "full").exists()  # full was not sampled first


def test_report_rows_carry_the_budget_match(tiny, tmp_path):
    from varianttrain.evaluation.runner import run

    var, _ = tiny
    cfg = _tiny_eval_config(tiny, tmp_path, "cost_only=true", "cost.enabled=false",
                            "method_options.fastvar.prune_ratios=0.25")
    report = run(cfg, log=lambda msg: None)
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == registry.available_methods()  # base = supernet = refiner here: one full row
    budget = DepthBudget(DEPTH, PATCH_NUMS, 2, bridge_scales=2, depth_choices=(1, 2))
    for name, row in rows.items():
        method = build_method(name, var, MethodOptions(budget=budget, knobs=cfg.method_options.get(name, {}),
                                                       refiner=var))
        assert row["budget_flops_per_image"] == budget.variant_flops(var).total
        assert row["flops_closed_form_per_image"] == method.budget_match.flops.total
        assert row["flop_ratio"] == method.budget_match.flop_ratio and row["budget_note"] == method.budget_match.note
    assert rows["fastvar"]["budget_note"] == "explicit prune ratios: not budget-matched"
    markdown = (tmp_path / "out" / "d2" / "report.md").read_text()
    assert "| FLOPs / budget |" in markdown and "## How each method meets the budget" in markdown
    assert "| fastvar | " in markdown and "explicit prune ratios: not budget-matched |" in markdown
    assert f"| {rows['variant']['flop_ratio']:.3f} |" in markdown


def test_image_seeds_are_pure_and_distinct():
    assert image_seed(0, 3, 7) == image_seed(0, 3, 7)
    seeds = {image_seed(0, c, i) for c in range(50) for i in range(50)}
    assert len(seeds) == 2500 and all(0 <= s < 2**63 for s in seeds)
    assert image_seed(1, 3, 7) != image_seed(0, 3, 7)
    assert [image_seed(5, c, 2, "index") for c in (0, 9)] == [7, 7]  # CoDe protocol: seed = base + index
    items = work_list([2, 0, 1], 3, base_seed=0)
    assert [(it.label, it.index) for it in items[:4]] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert [it.global_index for it in items] == list(range(9))
    assert sorted(sample_name(it.label, it.index) for it in items) == [sample_name(it.label, it.index) for it in items]


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_sharding_is_a_partition_with_world_independent_batches(world):
    items = work_list(range(7), 5, base_seed=1)
    all_batches = batches(items, 4)
    shards = [shard_batches(all_batches, r, world) for r in range(world)]
    union = sorted(tuple(b[0] for b in shard) for shard in shards)
    flat = sorted(it for shard in shards for b in shard for it in b)
    assert flat == sorted(items)  # disjoint and complete
    assert sum(len(s) for s in shards) == len(all_batches) and union is not None
    # every batch is the same object list whatever the world size: images see the same companions
    assert sorted(map(tuple, (b for s in shards for b in s))) == sorted(map(tuple, all_batches))
