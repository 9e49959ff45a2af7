"""CoDe (collaborative decoding, Chen et al., CVPR 2025, arXiv 2411.17787): a large drafter for the first scales, a
small refiner for the rest, as a strategy of the one sampler.

The drafter (the run's base model, e.g. VAR-d30) samples scales 0..N-1 with its own KV cache. At scale N the
refiner (another VAR on the same VQVAE, e.g. the released VAR-d16) takes over: the sampler runs one block-causal
pass of the refiner over the inputs of the drafted scales to fill the refiner's caches (`VAR.prefill`), and the
refiner samples scales N..K-1 (`SamplingMethod.model_at`). The models share the VQVAE latent space, which is why a
pair trained separately can hand over without training (the paper also fine-tunes a specialised pair; any pair of
VAR checkpoints on the same VQVAE loads here, the released ones included).

Random numbers: one multinomial draw per token of every scale, in scale order, exactly like the full model, so
image i of CoDe and of the full model start from the same stream. (The official code re-samples the drafted scales
with the refiner only to keep that stream aligned; the draws here never change, so there is nothing to re-sample.)

Budget: N is the number of drafted scales. The factory picks the N in 0..K whose counted FLOPs (drafter scales,
refiner prefill, refiner scales, both models' heads and modulations) come closest to the budget, ties to the
cheaper; ``draft_scales`` sets N explicitly. N = K is the drafter alone, N = 0 the refiner alone. KV memory: the
drafter's caches are released at the hand-over, so the peak is the larger model's (`SampleOutput`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from varianttrain.methods.common import match_budget
from varianttrain.methods.spec import MethodOptions, MethodSpec, check_int
from varianttrain.models.depth_plan import FULL_SCALE, DepthPlan, ScalePlan
from varianttrain.models.flops import FlopCounter, token_sampling_flops
from varianttrain.models.var import VAR
from varianttrain.sampling.sampler import SamplingContext, SamplingMethod


class CoDeMethod(SamplingMethod):
    """Drafter for scales < `draft_scales`, refiner from there on.

    Args:
        drafter: the model the sampler is called with (the large one).
        refiner: the model that takes over (same VQVAE: vocabulary, code channels, pyramid and classes).
        draft_scales: N, scales sampled by the drafter (0..K).
    """

    name = "code"

    def __init__(self, drafter: VAR, refiner: VAR, draft_scales: int):
        check_pair(drafter, refiner)
        K = len(drafter.patch_nums)
        if not 0 <= draft_scales <= K:
            raise ValueError(f"code: draft_scales={draft_scales} outside 0..{K}")
        self.drafter, self.refiner, self.draft_scales = drafter, refiner, draft_scales

    def begin(self, ctx: SamplingContext) -> None:
        if ctx.var is not self.drafter:
            raise ValueError("code was built for another drafter model than the one the sampler runs")

    def model_at(self, scale: int) -> VAR | None:
        return self.refiner if scale >= self.draft_scales else None

    def kv_capacity_plan(self) -> DepthPlan | None:
        # The drafter only ever holds the drafted scales: size its caches for them.
        K = len(self.drafter.patch_nums)
        scales = [FULL_SCALE] * self.draft_scales + [ScalePlan(blocks=())] * (K - self.draft_scales)
        return DepthPlan(self.drafter.depth, self.drafter.patch_nums, scales)

    def expected_flops(self) -> FlopCounter:
        return code_flops(self.drafter, self.refiner, self.draft_scales)

    def describe(self) -> str:
        K = len(self.drafter.patch_nums)
        return (f"code: drafter depth {self.drafter.depth} for scales 0..{self.draft_scales - 1}, refiner depth "
                f"{self.refiner.depth} for scales {self.draft_scales}..{K - 1}")


def check_pair(drafter: VAR, refiner: VAR) -> None:
    """The two models must share the VQVAE and the class set, or the hand-over is meaningless."""
    problems = [f"{what} {a} vs {b}" for what, a, b in (
        ("vocabulary", drafter.V, refiner.V), ("code channels", drafter.Cvae, refiner.Cvae),
        ("patch_nums", drafter.patch_nums, refiner.patch_nums), ("classes", drafter.num_classes, refiner.num_classes))
        if a != b]
    if problems:
        raise ValueError(f"code: the refiner does not fit the drafter ({'; '.join(problems)}): both must be VARs on "
                         "the same VQVAE and classes (e.g. var_d30.pth with var_d16.pth)")


def code_flops(drafter: VAR, refiner: VAR, draft_scales: int) -> FlopCounter:
    """Closed-form FLOPs of one image with CFG, exactly as the sampler counts a hand-over after `draft_scales`."""
    K, N = len(drafter.patch_nums), draft_scales
    if N == K:
        return _alone(drafter)
    if N == 0:
        return _alone(refiner)
    n = [pn * pn for pn in drafter.patch_nums]
    counter = FlopCounter()
    _decode(counter, drafter, n, range(0, N), keys_before=0, embeds_until=N)  # the next input is the refiner's
    counter.add_modulation(2, drafter.C, drafter.depth)
    prefix = sum(n[:N])  # the refiner's prefill: the inputs of the drafted scales, one dense block-causal pass
    for k in range(1, N + 1):
        counter.add_embed(2, n[k], refiner.Cvae, refiner.C)
    for _ in range(refiner.depth):
        counter.add_block(2, prefix, prefix, refiner.C)
    _decode(counter, refiner, n, range(N, K), keys_before=prefix, embeds_until=K)
    counter.add_modulation(2, refiner.C, refiner.depth)
    return counter


def _decode(counter: FlopCounter, var: VAR, n: list[int], scales: range, keys_before: int, embeds_until: int) -> None:
    """KV-cached scales of one model with CFG: every block, the head, and the next scale's input embedding."""
    cached = keys_before
    for k in scales:
        cached += n[k]
        for _ in range(var.depth):
            counter.add_block(2, n[k], cached, var.C)
        counter.add_head(2, n[k], var.C, var.V)
        if k + 1 < embeds_until:
            counter.add_embed(2, n[k + 1], var.Cvae, var.C)


def _alone(var: VAR) -> FlopCounter:
    table = [[pn * pn] * var.depth for pn in var.patch_nums]
    return token_sampling_flops(var.C, var.V, var.Cvae, var.patch_nums, table)


def matched_draft_scales(drafter: VAR, refiner: VAR, target: int) -> int:
    """N in 0..K whose CoDe FLOPs come closest to `target` (more drafted scales cost more; ties: the cheaper)."""
    K = len(drafter.patch_nums)

    def flops(x: float) -> int:  # a step function of x: N = floor(x)
        return code_flops(drafter, refiner, min(int(x), K)).total

    return min(int(match_budget(flops, target, 0.0, float(K))), K)


def build_code(var: VAR, options: MethodOptions) -> CoDeMethod:
    """Registry factory: the base model drafts, `options.refiner` refines; N matched to the budget's FLOPs."""
    refiner = options.refiner
    if refiner is None:
        raise ValueError("code needs a refiner model: set model.refiner (e.g. checkpoints/var_d16.pth, fetched with "
                         "`python -m varianttrain.download var_d16`)")
    check_pair(var, refiner)
    budget = options.budget
    target = budget.variant_flops(var).total
    if "draft_scales" in options.knobs:
        N = int(options.knobs["draft_scales"])
        if N > len(var.patch_nums):
            raise ValueError(f"method_options.code.draft_scales={N}; the model has {len(var.patch_nums)} scales")
        note = f"explicit draft_scales={N}: not budget-matched"
    else:
        N = matched_draft_scales(var, refiner, target)
        note = (f"drafter (depth {var.depth}) for {N} of {len(var.patch_nums)} scales, refiner (depth "
                f"{refiner.depth}) for the rest: the closest CoDe FLOPs (ties: the cheaper)")
    method = CoDeMethod(var, refiner, N)
    method.budget_match = budget.match(var, method.expected_flops(), note)
    return method


def check_code_knobs(knobs: Mapping[str, Any]) -> None:
    check_int("code", knobs, "draft_scales", 0)  # the upper limit K is checked with the model


METHOD = MethodSpec(
    "code", build_code, knobs=("draft_scales",), check_values=check_code_knobs, needs=("refiner",),
    help="CoDe: the base model drafts the first N scales, a smaller refiner VAR on the same VQVAE (model.refiner) "
         "prefills them and samples the rest; N matches the budget's FLOPs unless draft_scales is set")
