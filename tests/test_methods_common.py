"""The accelerators' shared toolbox: the one budget solver, the one closed-form sampling cost, and the rule that
method modules share code only through it."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from varianttrain.methods.common import match_budget
from varianttrain.methods.registry import METHODS
from varianttrain.models.flops import sampling_flops, token_sampling_flops

METHODS_DIR = Path(__file__).resolve().parents[1] / "varianttrain" / "methods"


# ---------------------------------------------------------------------------------------------------- match_budget
def _steps(x: float) -> int:
    """10 floor(4x) on [0, 1]: plateaus [0, .25) -> 0, [.25, .5) -> 10, [.5, .75) -> 20, [.75, 1) -> 30, {1} -> 40."""
    return 10 * math.floor(4 * x)


@pytest.mark.parametrize("target, expected_cost", [(12, 10), (18, 20), (-5, 0), (99, 40), (20, 20), (15, 10)])
def test_match_budget_takes_the_closest_plateau_ties_to_the_cheaper(target, expected_cost):
    x = match_budget(_steps, target, 0.0, 1.0)
    assert _steps(x) == expected_cost
    if expected_cost < 40:  # the centre of the plateau, not one of its edges
        assert x == pytest.approx((expected_cost / 10 + 0.5) / 4, abs=1e-12)


def test_match_budget_ties_to_the_dearer_when_asked():
    assert _steps(match_budget(_steps, 15, 0.0, 1.0, ties="dearer")) == 20
    assert _steps(match_budget(_steps, 14, 0.0, 1.0, ties="dearer")) == 10  # not a tie: the closer one


@pytest.mark.parametrize("target, expected_cost", [(12, 10), (15, 10), (25, 20), (26, 30), (-1, 0), (50, 40)])
def test_match_budget_decreasing_cost(target, expected_cost):
    def falling(x: float) -> int:  # 40 - cost above: cheaper as x grows, like a prune ratio
        return 40 - _steps(x)

    x = match_budget(falling, target, 0.0, 1.0, increasing=False)
    assert falling(x) == expected_cost


def test_match_budget_finds_a_one_float_step_unless_the_resolution_is_coarser():
    edge = 0.3

    def cost(x: float) -> int:  # a step that exists at one float only, as floating-point costs can have
        return 0 if x < edge else (5 if x == edge else 10)

    assert cost(match_budget(cost, 5, 0.0, 1.0)) == 5
    assert cost(match_budget(cost, 5, 0.0, 1.0, resolution=1e-12)) in (0, 10)
    with pytest.raises(ValueError, match="ties"):
        match_budget(cost, 5, 0.0, 1.0, ties="nearest")


# ------------------------------------------------------------------------------------------ token_sampling_flops
def test_token_sampling_flops_by_hand():
    """Two scales (1, then 2x2 tokens), two blocks, the CFG pair dropped at scale 1; every term written out."""
    C, V, Z = 8, 5, 3
    flops = token_sampling_flops(C, V, Z, (1, 2), [[1, 1], [4, 0]], rows=[2, 1])
    block0 = 2 * 2 * 1 * 12 * C * C + 2 * 2 * 2 * 1 * 1 * C  # scale 0: 1 query over 1 key, both blocks
    block1 = 2 * 1 * 4 * 12 * C * C + 2 * 1 * 2 * 4 * 5 * C  # scale 1: 4 queries over 1 + 4 keys, block 0 only
    assert flops.linear + flops.attention == 2 * block0 + block1
    assert flops.head == 2 * 2 * (1 * C * V + 2 * C * C) + 2 * 1 * (4 * C * V + 2 * C * C)
    assert flops.embed == 2 * 2 * 4 * Z * C  # scale 1's input, embedded with scale 0's rows
    assert flops.modulation == 2 * 2 * 2 * 6 * C * C  # both blocks run at scale 0, with the CFG rows
    with pytest.raises(ValueError, match="one row count and one token count per block"):
        token_sampling_flops(C, V, Z, (1, 2), [[1, 1], [4]], rows=2)


def test_scale_wise_plans_are_a_case_of_the_token_table():
    C, V, Z, patch_nums = 16, 7, 4, (1, 2, 3)
    blocks = [(0, 1, 2), (0, 2), (2,)]
    table = [[pn * pn if b in bl else 0 for b in range(3)] for pn, bl in zip(patch_nums, blocks, strict=True)]
    assert sampling_flops(C, V, Z, patch_nums, blocks) == token_sampling_flops(C, V, Z, patch_nums, table)
    assert sampling_flops(C, V, Z, patch_nums, blocks, cfg=False) == token_sampling_flops(C, V, Z, patch_nums, table, 1)
    per_scale = sampling_flops(C, V, Z, patch_nums, blocks, modulation_per_scale=True)
    assert per_scale.modulation == 2 * 2 * 6 * C * C * (3 + 2 + 1)


# ------------------------------------------------------------------------------------------------- module rules
def _imported_method_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "varianttrain.methods":
                names.update(alias.name for alias in node.names)
            elif node.module.startswith("varianttrain.methods."):
                names.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("varianttrain.methods."))
    return names


def test_no_method_module_imports_another():
    """A method module uses the shared toolbox and its own helper modules (depthvar -> depthvar_schedule) only."""
    shared = {"budget", "common", "spec"}
    method_modules = {spec.factory.__module__.rsplit(".", 1)[1] for spec in METHODS}
    assert method_modules == {"baselines", "depthvar", "stagevar", "fastvar", "code"}
    for module in sorted(method_modules):
        imported = _imported_method_modules(METHODS_DIR / f"{module}.py")
        foreign = {m for m in imported if m not in shared and not m.startswith(f"{module}_")}
        assert not foreign, f"{module}.py imports {sorted(foreign)}; share code through common.py instead"
    for helper in ("depthvar_schedule", "common", "spec", "budget"):  # helpers never reach back into methods
        assert not _imported_method_modules(METHODS_DIR / f"{helper}.py") & (method_modules | {"registry"})


def test_one_budget_solver():
    """Bisection lives in common.match_budget only: no method module carries its own copy."""
    for path in sorted(METHODS_DIR.glob("*.py")):
        if path.name != "common.py":
            source = path.read_text()
            assert "0.5 * (lo + hi)" not in source and "0.5 * (a + b)" not in source, path.name


def test_capacity_plans_are_built_once_and_size_caches_without_reading_tensors():
    from varianttrain.methods.common import capacity_plan
    from varianttrain.sampling.host_syncs import HostSyncCounter

    plan = capacity_plan(3, (1, 2, 3), [None, [4, 0, 2], (9, 9, 1)])
    assert capacity_plan(3, [1, 2, 3], (None, (4, 0, 2), [9, 9, 1])) is plan  # same table, same plan
    assert capacity_plan(3, (1, 2, 3), [None, [4, 0, 2], (9, 9, 2)]) is not plan
    with HostSyncCounter() as reads:
        table = plan.tokens_per_block()
    assert reads.count == 0
    assert table == [[1.0, 1.0, 1.0], [4.0, 0.0, 2.0], [9.0, 9.0, 1.0]]
    mask = plan.scales[2].token_mask_BDl
    assert mask.sum(-1).tolist() == [[9, 9, 1]]  # the synthetic masks agree with the counts they carry
