"""Acceleration methods plugged into the one sampler.

`registry` lists them by name; `spec` is what a method module declares, `budget` the compute budget every method is
built for, `common` the toolbox the accelerators share. One module per method: `baselines` (full, variant,
earlyexit), `depthvar` (its math in `depthvar_schedule`), `stagevar`, `fastvar`.
"""
