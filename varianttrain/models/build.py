"""Building a model that is about to receive loaded weights, without paying for a random initialisation.

VAR-d30's 2 B parameters take over a minute and several GB of transient memory to initialise randomly; a model
whose every tensor is then overwritten by a checkpoint does not need that. The model is built on the meta device
(no storage, no init), given uninitialised storage, and its constant buffers are recomputed; the caller must load
every parameter and persistent buffer afterwards (strict loading checks that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

ModelT = TypeVar("ModelT", bound=nn.Module)


def empty_model(build: Callable[[], ModelT], device: torch.device | str = "cpu") -> ModelT:
    """`build()` without initialisation: parameters hold garbage until weights are loaded into them."""
    with torch.device("meta"):
        model = build()
    model = model.to_empty(device=device)
    for module in model.modules():  # constants computed at construction (masks, level ids, usage counters)
        reset = getattr(module, "reset_constant_buffers", None)
        if callable(reset):
            reset()
    return model
