"""Progress bars for the long stages (sampling, feature extraction, reference statistics, hashing), rank 0 only.

tqdm on stderr with rate and ETA. In a terminal it redraws in place; in a log file (torchrun, SLURM) it writes a line
at most every 30 s, so a 50 000-image run leaves a readable log rather than a wall of carriage returns. Other ranks
stay silent: their work is the same list, cut differently.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class _NoBar:
    """What a silent rank (or a stage too short for a bar) gets: the same interface, no output."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "img", min_total: int = 1, **kwargs: Any) -> Iterator[Any]:
    """A tqdm bar on rank 0 (`bar.update(n)`), or a silent stand-in on other ranks and for totals below
    `min_total`."""
    if _rank() != 0 or (total is not None and total < min_total):
        yield _NoBar()
        return
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    # In a log file: nothing for stages under 5 s, then a line at most every 30 s.
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=interactive,
               mininterval=0.5 if interactive else 30.0, delay=0 if interactive else 5.0, leave=True, **kwargs)
    try:
        yield bar
    finally:
        bar.close()
