"""Count the operations that read tensor data back to the host (a device sync on a GPU) in a block of code.

    with HostSyncCounter() as syncs:
        generate(...)
    assert syncs.count == 0, syncs.calls

Works on any device, the CPU included, so a CPU test can show that a loop would not stall a GPU: it sees every
ATen operation the Python code issues (a `TorchDispatchMode`) and flags those whose result the host must read
(`.item()`, `bool()`, `int()` on a tensor, data-dependent output shapes: `nonzero`, boolean indexing, `unique`, ...),
plus `Tensor.tolist` / `Tensor.numpy`, which bypass the dispatcher on the CPU. It cannot see a read inside a C++
kernel; on a GPU, `torch.cuda.set_sync_debug_mode("error")` catches those too.

The other direction is counted apart (`host_tensors`, not in `count`): tensors built from Python data
(`torch.tensor([...])`, indexing with a list), each a host-to-device copy when the code runs on a GPU. Python
scalars are not counted: kernels take them as arguments.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operations whose output the host must read: a scalar, or a shape that depends on the values.
_SYNCING_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::nonzero", "aten::nonzero_static", "aten::argwhere", "aten::masked_select",
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::bincount",
    "aten::repeat_interleave", "aten::masked_scatter", "aten::is_nonzero", "aten::equal",
})
# Indexing with a boolean mask needs the number of True entries.
_BOOL_INDEXED_OPS = frozenset({"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"})


def _is_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices or ())


class HostSyncCounter(TorchDispatchMode):
    """Context manager; `count` = host reads seen, `calls` = how many of each (by operation name), `host_tensors` =
    tensors built from host data."""

    def __init__(self):
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.host_tensors = 0
        self._patched: list[tuple[str, object | None]] = []

    @property
    def count(self) -> int:
        return sum(self.calls.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in _SYNCING_OPS or (name in _BOOL_INDEXED_OPS and _is_bool_index(args)):
            self.calls[name] += 1
        elif name == "aten::lift_fresh" and args[0].dim() > 0:
            self.host_tensors += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for method in ("tolist", "numpy"):
            own = torch.Tensor.__dict__.get(method)  # None: inherited from the C class, restored by deleting ours
            self._patched.append((method, own))
            setattr(torch.Tensor, method, self._counting(method, getattr(torch.Tensor, method)))
        return super().__enter__()

    def __exit__(self, *exc):
        for method, own in self._patched:
            if own is None:
                delattr(torch.Tensor, method)
            else:
                setattr(torch.Tensor, method, own)
        self._patched.clear()
        return super().__exit__(*exc)

    def _counting(self, method: str, original):
        def counted(tensor, *args, **kwargs):
            self.calls[f"Tensor.{method}"] += 1
            return original(tensor, *args, **kwargs)

        return counted
