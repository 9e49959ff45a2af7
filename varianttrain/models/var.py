"""The VAR transformer (next-scale prediction) with elastic depth.

Tensor names carry their layout as a suffix: B batch, L all tokens, l tokens of one scale, C width,
D condition width, V vocabulary, Cv VQ channels, h/w spatial size of one scale (`x_BLC`, `logits_BLV`, `idx_Bl`).

State-dict keys, shapes, initialisation and numerics follow the official release (FoundationVision/VAR
`models/var.py`, docs/REFERENCES.md B1-B17); which blocks run for which tokens is decided by a `DepthPlan` (see
depth_plan.py) passed to `forward` and to `forward_scale`.
Deliberate differences from the official module (none changes a parameter or a full-depth output):
* label dropout happens only in training mode (the official code also drops 10 % of labels in eval,
  docs/REFERENCES.md B3);
* no process-wide init patching, no generator created at construction, no VQVAE held inside the module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from varianttrain.models.blocks import AdaLNBeforeHead, AdaLNBlock
from varianttrain.models.depth_plan import DepthPlan, ScalePlan
from varianttrain.models.flops import FlopCounter
from varianttrain.models.kv_cache import KVCache

RELEASED_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

# hook(block, x_in_BlC, x_out_BlC, ran_Bl) -> x_out_BlC, after each block. ran_Bl is None when every token ran the
# block, else a bool (rows, l) map (all False when the block was skipped at this scale). Lets a method record
# per-block changes (or change the output).
BlockHook = Callable[[int, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
# fill(block, x_in_BlC) -> the hidden states (rows, l, C) that the tokens skipping `block` take instead of the
# identity x_in (DepthVAR's proxy residuals, FastVAR's cached changes); only their positions are read. Called only
# when some token skips the block. Must return a new tensor: the model writes the running tokens' outputs into it,
# so a masked block costs one gather and one scatter.
SkipFill = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class VARConfig:
    """Architecture of a VAR transformer. `for_depth` gives the released family (width 64*depth, heads=depth)."""

    depth: int = 30
    embed_dim: int = 1920  # width C
    num_heads: int = 30
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # the embedding table has one extra row: the null class used for CFG
    vocab_size: int = 4096  # V, codebook size of the VQVAE
    z_channels: int = 32  # Cv, VQVAE latent channels
    patch_nums: tuple[int, ...] = RELEASED_PATCH_NUMS
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.125  # rate of the last block; block b uses linspace(0, rate, depth)[b]
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1  # label dropout for classifier-free guidance (training mode only)
    attn_l2_norm: bool = True

    @classmethod
    def for_depth(cls, depth: int, **overrides) -> VARConfig:
        """The official family: C = 64 depth, heads = depth, drop-path 0.1 depth / 24 ([VAR §4]; REFERENCES.md B15)."""
        base = dict(depth=depth, embed_dim=64 * depth, num_heads=depth, drop_path_rate=0.1 * depth / 24)
        base.update(overrides)
        return cls(**base)

    @property
    def num_tokens(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)

    def describe(self) -> str:
        return (f"depth-{self.depth} VAR (width {self.embed_dim}, {self.num_heads} heads, {self.num_classes} classes, "
                f"vocab {self.vocab_size}, patch_nums {list(self.patch_nums)})")


@dataclass
class ScaleStepStats:
    """What one `forward_scale` call executed (for cost reports)."""

    block_calls: int = 0
    token_blocks: int = 0
    flops: FlopCounter = field(default_factory=FlopCounter)


class VAR(nn.Module):
    """Class-conditional next-scale transformer with official parameter names and elastic depth."""

    def __init__(self, config: VARConfig):
        super().__init__()
        c = config
        self.config = c
        self.depth, self.C, self.D = c.depth, c.embed_dim, c.embed_dim
        self.num_classes, self.V, self.Cvae = c.num_classes, c.vocab_size, c.z_channels
        self.patch_nums = tuple(c.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.L = c.num_tokens
        self.num_stages_minus_1 = len(self.patch_nums) - 1
        self.gradient_checkpointing = False
        init_std = (1 / self.C / 3) ** 0.5

        # Registration order reproduces the official state-dict order (parameters, buffers, then children).
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, self.C))
        trunc_normal_(self.pos_start, std=init_std)
        pos = []
        for pn in self.patch_nums:
            pe = torch.empty(1, pn * pn, self.C)
            trunc_normal_(pe, std=init_std)
            pos.append(pe)
        self.pos_1LC = nn.Parameter(torch.cat(pos, dim=1))
        lvl_1L, attn_bias, allowed_LL = self._constant_buffers()
        self.register_buffer("lvl_1L", lvl_1L)
        self.register_buffer("attn_bias_for_masking", attn_bias)
        # The bool form is what SDPA consumes (dtype-agnostic under autocast); not part of the state dict.
        self.register_buffer("allowed_LL", allowed_LL, persistent=False)

        self.word_embed = nn.Linear(self.Cvae, self.C)
        self.class_emb = nn.Embedding(self.num_classes + 1, self.C)
        trunc_normal_(self.class_emb.weight, std=init_std)
        self.lvl_embed = nn.Embedding(len(self.patch_nums), self.C)
        trunc_normal_(self.lvl_embed.weight, std=init_std)
        if c.shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(self.D, 6 * self.C))
        dpr = torch.linspace(0, c.drop_path_rate, c.depth, device="cpu").tolist()  # float32 values, like the release
        self.blocks = nn.ModuleList(
            AdaLNBlock(self.C, self.D, c.num_heads, mlp_ratio=c.mlp_ratio, drop_path=dpr[b], norm_eps=c.norm_eps,
                       shared_aln=c.shared_aln, attn_l2_norm=c.attn_l2_norm, drop=c.drop_rate,
                       attn_drop=c.attn_drop_rate)
            for b in range(c.depth))
        self.head_nm = AdaLNBeforeHead(self.C, self.D, norm_eps=c.norm_eps)
        self.head = nn.Linear(self.C, self.V)

    # ------------------------------------------------------------------ initialisation
    def _constant_buffers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lvl_1L scale id of every token, the additive block-causal mask, its bool form) for this pyramid."""
        lvl_1L = torch.cat([torch.full((pn * pn,), k) for k, pn in enumerate(self.patch_nums)]).view(1, self.L)
        allowed_LL = lvl_1L[0][None, :] <= lvl_1L[0][:, None]  # query i may see key j iff scale(j) <= scale(i)
        attn_bias = torch.where(allowed_LL, 0.0, float("-inf")).reshape(1, 1, self.L, self.L).contiguous()
        return lvl_1L, attn_bias, allowed_LL

    @torch.no_grad()
    def reset_constant_buffers(self) -> None:
        """Recompute the buffers that are functions of the pyramid (after building without initialisation)."""
        for name, value in zip(("lvl_1L", "attn_bias_for_masking", "allowed_LL"), self._constant_buffers(),
                               strict=True):
            getattr(self, name).copy_(value)

    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                     init_std: float = -1.0) -> None:
        """The official initialisation: truncated normals, damped gammas, scaled projections (REFERENCES.md B15)."""
        std = (1 / self.C / 3) ** 0.5 if init_std < 0 else init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                trunc_normal_(m.weight, std=std)
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        depth = len(self.blocks)
        for block in self.blocks:
            block.attn.proj.weight.div_((2 * depth) ** 0.5)
            block.ffn.fc2.weight.div_((2 * depth) ** 0.5)
            if block.shared_aln:
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                lin = block.ada_lin[-1]
                lin.weight[2 * self.C:].mul_(init_adaln)
                lin.weight[:2 * self.C].mul_(init_adaln_gamma)
                lin.bias.zero_()

    # ------------------------------------------------------------------ shared pieces
    def block_condition(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """What the blocks' AdaLN consumes: the class embedding, or the shared projection (shared AdaLN)."""
        if self.config.shared_aln:
            return self.shared_ada_lin(cond_BD).view(-1, 1, 6, self.C)
        return cond_BD

    def block_modulations(self, cond_BD: torch.Tensor) -> BlockModulations:
        """Per-block (B, 1, 6, C) AdaLN vectors; constant over scales, so samplers compute each once, on first use."""
        return BlockModulations(self, self.block_condition(cond_BD))

    def logits(self, x_BlC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Head: AdaLN then Linear, returned in float32."""
        return self.head(self.head_nm(x_BlC.float(), cond_BD.float())).float()

    def level_position(self, begin: int, end: int) -> torch.Tensor:
        """lvl_embed + pos_1LC for token positions [begin, end): (1, end - begin, C), float32."""
        return self.lvl_embed(self.lvl_1L[:, begin:end]) + self.pos_1LC[:, begin:end]

    def start_tokens(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Scale-0 input: class embedding + pos_start + level/position embedding (B, first_l, C)."""
        B = cond_BD.shape[0]
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        return sos + self.level_position(0, self.first_l)

    def scale_input(self, scale: int, x_BlCv: torch.Tensor) -> torch.Tensor:
        """Input tokens of `scale` >= 1 from the down-sampled cumulative VQ map (B, n_scale, Cv)."""
        begin = sum(pn * pn for pn in self.patch_nums[:scale])
        return self.word_embed(x_BlCv.float()) + self.level_position(begin, begin + x_BlCv.shape[1])

    def class_condition(self, label_B: torch.Tensor) -> torch.Tensor:
        """Class embedding (label `num_classes` is the null class); applies label dropout in training mode."""
        if self.training and self.config.cond_drop_rate > 0:
            drop = torch.rand(label_B.shape[0], device=label_B.device) < self.config.cond_drop_rate
            label_B = torch.where(drop, self.num_classes, label_B)
        return self.class_emb(label_B)

    # ------------------------------------------------------------------ teacher forcing
    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor,
                plan: DepthPlan | None = None) -> torch.Tensor:
        """Teacher-forcing logits (B, L, V) for ground-truth inputs, running the blocks the plan selects."""
        x_BLC, cond_BD = self.embed_inputs(label_B, x_BLCv_wo_first_l)
        block_cond = self.block_condition(cond_BD)
        for b, block in enumerate(self.blocks):
            tokens = None if plan is None else plan.block_tokens(b)
            x_BLC = self._run_block_teacher_forcing(block, x_BLC, block_cond, tokens)
        return self.logits(x_BLC, cond_BD)

    def embed_inputs(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block-0 input (B, L, C) and class condition (B, D) of the teacher-forcing sequence, in float32."""
        with torch.autocast(device_type=x_BLCv_wo_first_l.device.type, enabled=False):
            cond_BD = self.class_condition(label_B)
            B = label_B.shape[0]
            sos_BlC = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
            x_BLC = torch.cat((sos_BlC, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
            x_BLC = x_BLC + self.level_position(0, x_BLC.shape[1])
        return x_BLC, cond_BD

    def _call_block(self, block: AdaLNBlock, x_BlC: torch.Tensor, block_cond: torch.Tensor,
                    attn_mask: torch.Tensor, valid_Bl: torch.Tensor | None = None) -> torch.Tensor:
        def run(x, cond, mask, valid):
            return block(x, cond, attn_mask=mask, valid_Bl=valid)

        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(run, x_BlC, block_cond, attn_mask, valid_Bl, use_reentrant=False)
        return run(x_BlC, block_cond, attn_mask, valid_Bl)

    def _run_block_teacher_forcing(self, block: AdaLNBlock, x_BLC: torch.Tensor, block_cond: torch.Tensor,
                                   tokens: int | torch.Tensor | None) -> torch.Tensor:
        if tokens is None:  # every token runs the block
            return self._call_block(block, x_BLC, block_cond, self.allowed_LL)
        if isinstance(tokens, int):  # only a prefix runs it: compute on the prefix, the rest is identity
            if tokens == 0:
                return x_BLC
            head = self._call_block(block, x_BLC[:, :tokens], block_cond, self.allowed_LL[:tokens, :tokens])
            return torch.cat((head, x_BLC[:, tokens:]), dim=1)
        # Per-token selection: gather the running tokens (raster order, padded to the longest row), attend
        # block-causally among them, scatter the results back; everything else is identity.
        B, L, C = x_BLC.shape
        active_BL = tokens.to(x_BLC.device).expand(B, L)
        counts_B = active_BL.sum(1)
        n_max = int(counts_B.max())
        if n_max == 0:
            return x_BLC
        idx_Bn = torch.argsort((~active_BL).to(torch.int8), dim=1, stable=True)[:, :n_max]
        valid_Bn = torch.arange(n_max, device=x_BLC.device)[None] < counts_B[:, None]
        lvl_Bn = self.lvl_1L[0][idx_Bn]
        attn_mask = (lvl_Bn[:, None, :] <= lvl_Bn[:, :, None]) & valid_Bn[:, None, :]
        x_sel = x_BLC.gather(1, idx_Bn[..., None].expand(B, n_max, C))
        y_sel = self._call_block(block, x_sel, block_cond, attn_mask[:, None], valid_Bn)
        return scatter_rows(x_BLC, idx_Bn, y_sel, valid_Bn)

    # ------------------------------------------------------------------ sampling step
    def new_kv_caches(self, plan: DepthPlan | None = None) -> list[KVCache]:
        """One cache per block, sized for the tokens the plan lets each block see (full length otherwise)."""
        caps = [self.L] * self.depth
        if plan is not None:
            table = plan.tokens_per_block()
            caps = [max(1, int(round(sum(row[b] for row in table)))) for b in range(self.depth)]
        return [KVCache(cap) for cap in caps]

    def forward_scale(self, x_BlC: torch.Tensor, modulations: BlockModulations | Sequence[torch.Tensor],
                      scale_plan: ScalePlan, caches: Sequence[KVCache], hook: BlockHook | None = None,
                      stats: ScaleStepStats | None = None, fill: SkipFill | None = None) -> torch.Tensor:
        """Run the blocks of one scale on its tokens with KV caching (the block-causal mask is implicit).

        With a token mask, each block gathers its running tokens once, runs them and scatters the results into the
        state of the skipping tokens: `fill(block, x_in)` (a method's proxy) or x_in (identity). No host sync when
        the plan carries its per-block `token_counts`.
        """
        rows, l, C = x_BlC.shape
        selection = None if scale_plan.token_mask_BDl is None else TokenSelection(scale_plan, rows)
        none_ran = None  # (rows, l) all False, for hooks at a skipped block; made on first use
        for b, block in enumerate(self.blocks):
            x_in = x_BlC
            if not scale_plan.runs_block(b):
                if fill is not None:
                    x_BlC = fill(b, x_in)
                if hook is not None:
                    if none_ran is None:
                        none_ran = torch.zeros(rows, l, dtype=torch.bool, device=x_BlC.device)
                    x_BlC = hook(b, x_in, x_BlC, none_ran)
                continue
            mod = modulations[b][:rows]  # lazily computed: blocks a plan never runs cost nothing
            if selection is None:
                x_BlC = block(x_BlC, mod_B16C=mod, cache=caches[b])
                ran, n_q = None, l
            else:
                n_q, ran = selection.counts[b], selection.ran(b)
                if n_q == 0:
                    if fill is not None:
                        x_BlC = fill(b, x_in)
                    if hook is not None:
                        x_BlC = hook(b, x_in, x_BlC, ran)
                    continue
                idx_Bn, valid_Bn = selection.index(b), selection.valid(b)
                x_sel = x_BlC.gather(1, idx_Bn[..., None].expand(rows, n_q, C))
                y_sel = block(x_sel, mod_B16C=mod, cache=caches[b], valid_Bl=valid_Bn)
                if fill is None or ran is None:
                    x_BlC = scatter_rows(x_in, idx_Bn, y_sel, valid_Bn)
                else:  # the fill is a new tensor: write the running tokens into it
                    x_BlC = scatter_rows(fill(b, x_in), idx_Bn, y_sel, valid_Bn, inplace=True)
            if stats is not None:
                stats.block_calls += 1
                stats.token_blocks += rows * n_q
                stats.flops.add_block(rows=rows, queries=n_q, keys=caches[b].length, width=self.C)
            if hook is not None:
                x_BlC = hook(b, x_in, x_BlC, ran)
        return x_BlC

    def prefill(self, x_BPC: torch.Tensor, modulations: BlockModulations | Sequence[torch.Tensor],
                caches: Sequence[KVCache], stats: ScaleStepStats | None = None) -> torch.Tensor:
        """Run every block over the inputs of the first scales at once, block-causally, filling empty KV caches.

        Equivalent to running `forward_scale` scale by scale on the same inputs (a model taking over tokens that
        another model drafted, CoDe); returns the hidden states, which the caller usually discards.
        """
        rows, P, _ = x_BPC.shape
        if any(cache.length for cache in caches):
            raise ValueError("prefill needs empty KV caches")
        mask_PP = self.allowed_LL[:P, :P]
        for b, block in enumerate(self.blocks):
            x_BPC = block(x_BPC, mod_B16C=modulations[b][:rows], attn_mask=mask_PP, cache=caches[b])
            if stats is not None:
                stats.block_calls += 1
                stats.token_blocks += rows * P
                stats.flops.add_block(rows=rows, queries=P, keys=P, width=self.C)  # the masked square runs
        return x_BPC


class BlockModulations:
    """Lazily computed per-block AdaLN modulations (blocks a plan never runs cost nothing)."""

    def __init__(self, var: VAR, block_cond: torch.Tensor):
        self._var, self._cond = var, block_cond
        self._cache: dict[int, torch.Tensor] = {}

    def __getitem__(self, block: int) -> torch.Tensor:
        if block not in self._cache:
            self._cache[block] = self._var.blocks[block].modulation(self._cond)
        return self._cache[block]

    @property
    def computed(self) -> int:
        """How many blocks' modulations were computed (for FLOP counting)."""
        return len(self._cache)


def scatter_rows(x_BLC: torch.Tensor, idx_Bn: torch.Tensor, y_BnC: torch.Tensor,
                 valid_Bn: torch.Tensor | None, inplace: bool = False) -> torch.Tensor:
    """Write y back at positions idx (into x itself when `inplace`); padded entries (valid False) are discarded."""
    B, L, C = x_BLC.shape
    if valid_Bn is None:
        scatter = x_BLC.scatter_ if inplace else x_BLC.scatter
        return scatter(1, idx_Bn[..., None].expand(-1, -1, C), y_BnC.to(x_BLC.dtype))
    # Padding writes go to an extra dummy row that is dropped afterwards (no write conflicts with real tokens).
    x_ext = torch.cat((x_BLC, x_BLC.new_zeros(B, 1, C)), dim=1)
    idx = torch.where(valid_Bn, idx_Bn, L)
    return x_ext.scatter_(1, idx[..., None].expand(-1, -1, C), y_BnC.to(x_BLC.dtype))[:, :L]


class TokenSelection:
    """The running tokens of one masked scale, per block: built once per scale, on the mask's device.

    Rows are the model's rows (a CFG sampler runs 2 per image; both share the image's mask). Tokens run in raster
    order. Per-block counts come from `ScalePlan.token_counts` when the plan has them (no host sync), else from one
    read of the mask (`tolist`: the gather shapes depend on them); images with fewer running tokens than the most
    are padded, and the padding is marked invalid.
    """

    def __init__(self, scale_plan: ScalePlan, rows: int):
        mask_BDl = scale_plan.token_mask_BDl
        images, _, l = mask_BDl.shape
        if rows % images:
            raise ValueError(f"token mask has {images} rows, which does not divide the batch of {rows}")
        repeat = rows // images
        self._l = l
        if scale_plan.token_counts is not None:
            self.counts = list(scale_plan.token_counts)
            self._padded = [False] * len(self.counts)
            valid_BDl = None
        else:
            counts_BD = mask_BDl.sum(-1)
            per_image = counts_BD.tolist()  # the one host sync of this path
            self.counts = [max(col) for col in zip(*per_image, strict=True)]
            self._padded = [min(col) != max(col) for col in zip(*per_image, strict=True)]
            valid_BDl = None
            if any(self._padded):
                valid_BDl = torch.arange(l, device=mask_BDl.device) < counts_BD[..., None]
        order_BDl = torch.argsort((~mask_BDl).to(torch.int8), dim=-1, stable=True)
        self._order_RDl = order_BDl.repeat(repeat, 1, 1)
        self._ran_RDl = mask_BDl.repeat(repeat, 1, 1)
        self._valid_RDl = None if valid_BDl is None else valid_BDl.repeat(repeat, 1, 1)

    def ran(self, block: int) -> torch.Tensor | None:
        """(rows, l) bool: which tokens run `block`; None when all of them do."""
        if self.counts[block] == self._l and not self._padded[block]:
            return None
        return self._ran_RDl[:, block]

    def index(self, block: int) -> torch.Tensor:
        """(rows, n) positions of the running tokens (padded with other positions up to the largest count)."""
        return self._order_RDl[:, block, :self.counts[block]]

    def valid(self, block: int) -> torch.Tensor | None:
        """(rows, n) bool marking real (not padding) entries of `index`; None when no row is padded."""
        if not self._padded[block]:
            return None
        return self._valid_RDl[:, block, :self.counts[block]]
