"""Operator calls of a block of code, from the torch profiler: what a GPU would pay in launches before any timing.

    counts = count_ops(lambda: generate(...))
    counts.ops, counts.aten_calls, counts.host_syncs, counts.gpu_kernels

* `ops`: top-level ATen operator calls, i.e. what the Python code dispatches (an `F.linear` is one);
* `aten_calls`: every ATen call the dispatcher handled, nested ones included (the linear's transpose and matmul);
* `host_syncs`: reads of tensor data by the host (`HostSyncCounter`), each a stall on a GPU;
* `gpu_kernels`: the device activities the profiler recorded on a CUDA device (kernels, copies, memsets), else
  None. On the CPU there is no exact kernel count: an operator may do its work itself and call others too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from varianttrain.sampling.host_syncs import HostSyncCounter

_DISPATCH_MODE = "PythonDispatchMode"  # the profiler's record of a TorchDispatchMode (HostSyncCounter's)


@dataclass(frozen=True)
class OpCounts:
    ops: int
    aten_calls: int
    host_syncs: int
    gpu_kernels: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _aten(event) -> bool:
    return event.name.startswith("aten::")


def count_ops(fn: Callable[[], object], device: torch.device | None = None) -> OpCounts:
    """Run `fn` once under the profiler (and a `HostSyncCounter`) and count what it issued."""
    activities = [ProfilerActivity.CPU]
    cuda = device is not None and device.type == "cuda"
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof, HostSyncCounter() as syncs:
        fn()
        if cuda:
            torch.cuda.synchronize(device)
    ops = calls = 0
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CPU or not _aten(event):
            continue
        parent = event.cpu_parent
        if parent is not None and parent.name == _DISPATCH_MODE:
            continue  # the mode re-issues the call it intercepted: counted once, at the outer event
        while parent is not None and not _aten(parent):
            parent = parent.cpu_parent
        ops += parent is None
        calls += 1
    gpu = None
    if cuda:
        gpu = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return OpCounts(ops=ops, aten_calls=calls, host_syncs=syncs.count, gpu_kernels=gpu)
