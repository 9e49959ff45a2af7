"""The one KV-cached next-scale sampling loop; acceleration methods plug in as `SamplingMethod` strategies.

Per scale k: the method says which blocks run for which tokens (a `ScalePlan`), the model runs them with KV
caching, the head gives logits, guidance is applied with the official ramp, tokens are drawn with top-k/top-p,
and the VQ map f_hat is updated through the quantizer's Phi convs (official
`VAR.autoregressive_infer_cfg`; docs/REFERENCES.md B5-B8).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from varianttrain.models.depth_plan import FULL_SCALE, DepthPlan, ScalePlan
from varianttrain.models.flops import BudgetMatch
from varianttrain.models.var import VAR, ScaleStepStats
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.filtering import top_k_top_p_filter_
from varianttrain.sampling.rng import TokenRNG


@dataclass
class SamplingContext:
    """What a method may look at when a sampling call starts."""

    var: VAR
    vqvae: torch.nn.Module
    num_images: int
    device: torch.device
    sampling: SamplingConfig


class SamplingMethod:
    """Strategy interface: the default implementation is the unmodified model (every block, every token)."""

    name = "full"
    budget_match: BudgetMatch | None = None  # how the method meets the run's compute budget; set by its factory

    def begin(self, ctx: SamplingContext) -> None:
        """Called once per sampling call, before scale 0 (reset per-call state here)."""

    def scale_plan(self, scale: int) -> ScalePlan:
        """Which blocks run for which tokens at `scale`."""
        return FULL_SCALE

    def kv_capacity_plan(self) -> DepthPlan | None:
        """A static plan to size the KV caches with (None: full length, grown if needed)."""
        return None

    block_hook = None  # optional BlockHook (see varianttrain.models.var); set by methods that need one
    skip_fill = None  # optional SkipFill: what tokens that skip a block take instead of the identity (proxies)

    def before_head(self, scale: int, x_BlC: torch.Tensor) -> torch.Tensor:
        """Last chance to change the hidden states of `scale` before the head (DepthVAR's restoration)."""
        return x_BlC

    def on_guided_logits(self, scale: int, logits_BlV: torch.Tensor) -> None:
        """Sees the guided logits before filtering (do not modify; clone to keep)."""

    def code_weights(self, scale: int) -> torch.Tensor | None:
        """Optional (B, n) weights applied to the sampled code vectors before Phi (DepthVAR's blending)."""
        return None

    def model_at(self, scale: int) -> VAR | None:
        """The transformer that runs `scale` (None: the one the call was given). Must not depend on the images.

        A different model (same VQVAE, same pyramid) takes over from that scale on: the sampler fills its KV caches
        with the tokens drafted so far in one pass and continues with it (CoDe's drafter -> refiner hand-over).
        """
        return None


class StaticPlanMethod(SamplingMethod):
    """A fixed `DepthPlan`: the full model, a VARiant subnet, early exit."""

    def __init__(self, plan: DepthPlan, name: str = "static"):
        self.plan = plan
        self.name = name

    def begin(self, ctx: SamplingContext) -> None:
        if self.plan.depth != ctx.var.depth or self.plan.patch_nums != ctx.var.patch_nums:
            raise ValueError(f"plan for depth {self.plan.depth} / patch_nums {self.plan.patch_nums} does not fit "
                             f"the model ({ctx.var.config.describe()})")

    def scale_plan(self, scale: int) -> ScalePlan:
        return self.plan.scales[scale]

    def kv_capacity_plan(self) -> DepthPlan | None:
        return self.plan


@dataclass
class SampleOutput:
    """Result of one sampling call."""

    images_B3HW: torch.Tensor | None  # in [0, 1], None when decoding was skipped
    idx_Bl: list[torch.Tensor]  # sampled token indices per scale
    f_hat_BCvhw: torch.Tensor  # final VQ feature map (decoder input)
    stats: list[ScaleStepStats] = field(default_factory=list)  # per scale: what the transformer executed
    kv_cache_bytes: int = 0  # bytes allocated for KV caches (all blocks; the largest model's when models switch)
    kv_cache_bytes_by_model: list[int] = field(default_factory=list)  # per model used, in order
    raw_logits: list[torch.Tensor] = field(default_factory=list)  # per scale (rows, n, V), when recorded
    guided_logits: list[torch.Tensor] = field(default_factory=list)  # per scale (B, n, V), when recorded

    @property
    def flops(self) -> int:
        return sum(s.flops.total for s in self.stats)


def _autocast(device: torch.device, dtype_name: str):
    if device.type != "cuda" or dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, dtype_name))


class _ModelRun:
    """The per-model state of one sampling call: conditions, lazily computed modulations and KV caches.

    A call usually keeps one model; a method may hand the later scales to another model on the same VQVAE (CoDe's
    refiner, `SamplingMethod.model_at`), which then needs its own conditions and caches.
    """

    def __init__(self, var: VAR, label_B: torch.Tensor, capacity: DepthPlan | None):
        B = label_B.shape[0]
        self.var = var
        labels_2B = torch.cat((label_B, torch.full_like(label_B, var.num_classes)))
        self.cond_2BD = var.class_emb(labels_2B)
        self.head_cond_BD = self.cond_2BD
        self.modulations = var.block_modulations(self.cond_2BD)
        self.modulation_sets = [(2 * B, self.modulations)]  # (rows, lazily computed modulations), for FLOPs
        self.caches = var.new_kv_caches(capacity)

    def keep_branch(self, begin: int, B: int) -> None:
        """Keep rows [begin, begin + B) of the caches and conditions (a method dropped one CFG branch)."""
        for cache in self.caches:
            cache.keep_rows(begin, begin + B)
        self.head_cond_BD = self.cond_2BD[begin:begin + B]
        if begin:  # the cached modulations hold the conditional rows first: recompute for the others
            self.modulations = self.var.block_modulations(self.head_cond_BD)
            self.modulation_sets.append((B, self.modulations))

    def input_tokens(self, scale: int, inputs_BlCv: list[torch.Tensor | None], rows: int) -> torch.Tensor:
        """Input tokens of `scale` for this model: start tokens, or the embedded VQ input of that scale."""
        if scale == 0:
            return self.var.start_tokens(self.cond_2BD[:rows])
        x_BlC = self.var.scale_input(scale, inputs_BlCv[scale])
        return x_BlC.repeat(rows // x_BlC.shape[0], 1, 1)

    def prefill(self, scale: int, inputs_BlCv: list[torch.Tensor | None], rows: int, step: ScaleStepStats) -> None:
        """Fill this model's caches with the tokens of scales 0..scale-1 (drafted by another model), in one pass."""
        var = self.var
        parts = [self.input_tokens(k, inputs_BlCv, rows) for k in range(scale)]
        for k in range(1, scale):
            step.flops.add_embed(rows, var.patch_nums[k] ** 2, var.Cvae, var.C)
        var.prefill(torch.cat(parts, dim=1), self.modulations, self.caches, stats=step)

    @property
    def kv_cache_bytes(self) -> int:
        return sum(c.nbytes for c in self.caches)


@torch.no_grad()
def generate(var: VAR, vqvae: torch.nn.Module, label_B: torch.Tensor, sampling: SamplingConfig, rng: TokenRNG,
             method: SamplingMethod | None = None, decode: bool = True, record_logits: bool = False) -> SampleOutput:
    """Class-conditional next-scale sampling with classifier-free guidance.

    Args:
        label_B: class labels (B,), int64 on the model's device.
        rng: token draws (`TokenRNG.per_image(seeds)` for batch-independent results).
        method: acceleration strategy; None is the full model.
        decode: run the VQVAE decoder (False for model-only latency).
        record_logits: keep raw and guided logits per scale (tests, analysis).
    """
    method = method or SamplingMethod()
    device = label_B.device
    B, K = label_B.shape[0], len(var.patch_nums)
    quantize = vqvae.quantize
    Cv = var.Cvae
    latent = var.patch_nums[-1]
    method.begin(SamplingContext(var=var, vqvae=vqvae, num_images=B, device=device, sampling=sampling))

    out_idx: list[torch.Tensor] = []
    stats: list[ScaleStepStats] = []
    raw_logits, guided_logits = [], []
    with _autocast(device, sampling.autocast_dtype):
        run = _ModelRun(var, label_B, method.kv_capacity_plan())
        runs = [run]
        # The VQ-space input of every scale (B, n_k, Cv), kept so that a model taking over can embed them itself.
        inputs_BlCv: list[torch.Tensor | None] = [None] * K
        x_BlC = run.input_tokens(0, inputs_BlCv, 2 * B)
        f_hat = torch.zeros(B, Cv, latent, latent, device=device, dtype=torch.float32)
        rows = 2 * B
        for k, pn in enumerate(var.patch_nums):
            step = ScaleStepStats()
            model = method.model_at(k)
            if model is not None and model is not run.var:
                if rows != 2 * B:
                    raise ValueError(f"scale {k}: a model switch after a CFG branch was dropped is not supported")
                run = _ModelRun(model, label_B, None)
                runs.append(run)
                if k:
                    run.prefill(k, inputs_BlCv, rows, step)
                    step.flops.add_embed(rows, pn * pn, Cv, model.C)
                x_BlC = run.input_tokens(k, inputs_BlCv, rows)
            model = run.var
            scale_plan = method.scale_plan(k)
            if not scale_plan.guidance and rows == 2 * B:
                # From here on a single branch runs (StageVAR): keep its rows of the hidden states, the caches and
                # the conditions. The modulations of the kept rows are recomputed (cheap: B x 6C^2 per block).
                begin = 0 if scale_plan.kept_branch == "cond" else B
                rows = B
                x_BlC = x_BlC[begin:begin + B]
                run.keep_branch(begin, B)
            elif scale_plan.guidance and rows == B:
                raise ValueError(f"scale {k}: guidance cannot be re-enabled once a CFG branch is dropped")
            x_BlC = model.forward_scale(x_BlC, run.modulations, scale_plan, run.caches, hook=method.block_hook,
                                        stats=step, fill=method.skip_fill)
            x_BlC = method.before_head(k, x_BlC)
            logits_BlV = model.logits(x_BlC, run.head_cond_BD)
            step.flops.add_head(rows, pn * pn, model.C, model.V)
            if rows == 2 * B:
                t = sampling.cfg * k / max(K - 1, 1)
                guided_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
            else:
                guided_BlV = logits_BlV
            if record_logits:
                raw_logits.append(logits_BlV.clone())
                guided_logits.append(guided_BlV.clone())
            method.on_guided_logits(k, guided_BlV)
            temperature = sampling.temperature_at(k)
            filtered = guided_BlV / temperature if temperature != 1.0 else guided_BlV.clone()
            top_k_top_p_filter_(filtered, sampling.top_k, sampling.top_p)
            idx_Bl = rng.multinomial(filtered.softmax(dim=-1))
            out_idx.append(idx_Bl)
            codebook_VCv = quantize.embedding.weight
            if sampling.more_smooth:
                # Visualisation path of the official sampler: Gumbel-softmax mixture of codes (the token draw above
                # still happens first, so the generator advances identically).
                ratio = k / max(K - 1, 1)
                tau = max(0.27 * (1 - ratio * 0.95), 0.005)
                soft = ((filtered * (1 + ratio) + rng.gumbel(filtered)) / tau).softmax(dim=-1)
                h_BlCv = soft @ codebook_VCv.unsqueeze(0)
            else:
                h_BlCv = codebook_VCv[idx_Bl]
            weights = method.code_weights(k)
            if weights is not None:
                h_BlCv = h_BlCv * weights.to(h_BlCv.dtype).unsqueeze(-1)
            h_BCvhw = h_BlCv.transpose(1, 2).reshape(B, Cv, pn, pn).float()
            f_hat, next_BCvhw = quantize.get_next_autoregressive_input(k, K, f_hat, h_BCvhw)
            stats.append(step)
            if k + 1 < K:
                inputs_BlCv[k + 1] = next_BCvhw.reshape(B, Cv, -1).transpose(1, 2)
                following = method.model_at(k + 1)
                if following is None or following is model:  # else the next model embeds it itself
                    x_BlC = run.input_tokens(k + 1, inputs_BlCv, rows)
                    step.flops.add_embed(rows, var.patch_nums[k + 1] ** 2, Cv, model.C)
        for used in runs:
            for mod_rows, mods in used.modulation_sets:
                stats[0].flops.add_modulation(mod_rows, used.var.C, mods.computed)
        images = vqvae.fhat_to_img(f_hat).add(1).mul(0.5) if decode else None
    kv_by_model = [used.kv_cache_bytes for used in runs]
    return SampleOutput(images_B3HW=images, idx_Bl=out_idx, f_hat_BCvhw=f_hat, stats=stats,
                        kv_cache_bytes=max(kv_by_model), kv_cache_bytes_by_model=kv_by_model,
                        raw_logits=raw_logits, guided_logits=guided_logits)
