"""Sampling settings and the two ImageNet protocols in circulation
(docs/REFERENCES.md#sampling-protocols)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# The sampling protocols (presets of `SamplingConfig.preset`): 'official' is the VAR README's FID protocol, 'code'
# the CoDe protocol that VARiant reports its numbers with. The one definition of this vocabulary: the training
# config (validation samples) and the evaluation config import it from here.
SamplingProtocol = Literal["official", "code"]
SAMPLING_PROTOCOLS: tuple[str, ...] = get_args(SamplingProtocol)

# Compute dtypes of GPU sampling (`SamplingConfig.autocast_dtype`, also settable in the evaluation config).
AutocastDtype = Literal["bfloat16", "float16", "float32"]
AUTOCAST_DTYPES: tuple[str, ...] = get_args(AutocastDtype)


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn from the guided logits.

    Classifier-free guidance follows the official ramp: at scale k the logits are (1 + t) cond - t uncond with
    t = cfg * k / (K - 1), so guidance is 0 at the first scale and `cfg` at the last.
    """

    cfg: float = 1.5  # guidance strength reached at the last scale
    top_k: int = 900  # keep logits >= the k-th largest (ties kept); 0 disables
    top_p: float = 0.96  # nucleus on the top-k-filtered logits; 0 disables
    temperature: tuple[float, ...] = ()  # per-scale temperature for scales 0, 1, ...; missing entries are 1.0
    more_smooth: bool = False  # Gumbel-softmax code smoothing (visualisation only, never for FID)
    autocast_dtype: AutocastDtype = "bfloat16"  # compute dtype on GPU; CPU runs float32

    def __post_init__(self):
        if self.cfg < 0:
            raise ValueError(f"sampling.cfg must be >= 0, got {self.cfg}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0 (0 disables), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p must be in [0, 1] (0 disables), got {self.top_p}")
        if any(t <= 0 for t in self.temperature):
            raise ValueError(f"sampling.temperature entries must be > 0, got {self.temperature}")
        if self.autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"sampling.autocast_dtype must be one of {', '.join(AUTOCAST_DTYPES)}, "
                             f"got {self.autocast_dtype!r}")

    def temperature_at(self, scale: int) -> float:
        return self.temperature[scale] if scale < len(self.temperature) else 1.0

    @classmethod
    def official(cls) -> SamplingConfig:
        """FoundationVision/VAR README FID protocol: cfg 1.5 ramp, top-k 900, top-p 0.96."""
        return cls(cfg=1.5, top_k=900, top_p=0.96)

    @classmethod
    def code(cls) -> SamplingConfig:
        """CoDe / VARiant protocol: cfg 1.5 ramp, top-k 600, top-p 0.96, temperature 1.1 on the first 7 scales."""
        return cls(cfg=1.5, top_k=600, top_p=0.96, temperature=(1.1,) * 7)

    @classmethod
    def preset(cls, name: SamplingProtocol) -> SamplingConfig:
        """The settings of the sampling protocol `name` (one of `SAMPLING_PROTOCOLS`)."""
        if name not in SAMPLING_PROTOCOLS:
            raise ValueError(f"unknown sampling protocol {name!r}; choose one of {', '.join(SAMPLING_PROTOCOLS)}")
        return getattr(cls, name)()  # each protocol is the classmethod of the same name
