"""An ImageFolder that survives corrupt images: skipped, named in the log, counted, like the webdataset path.

torchvision's ImageFolder raises from inside a loader worker on the first unreadable file, with a traceback that
does not say which file; one bad JPEG among 1.28 M would end a multi-day run. Here an image that fails to decode is
replaced by the next readable one of the list (so batches keep their size and a resumed run sees the same samples),
logged with its path, and counted; more than `data.max_skip_fraction` bad files per worker stops the run, since that
is a broken copy of the data set rather than a few odd files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchvision.datasets import ImageFolder

from varianttrain.data.webdataset_pipeline import SkipCounter

# A run of this many unreadable files in a row is not a stray file: stop instead of searching the whole list.
MAX_CONSECUTIVE_BAD = 64


class SkippingImageFolder(ImageFolder):
    """`ImageFolder` whose unreadable images are replaced by the next readable one and counted (`skipped`)."""

    def __init__(self, root: str, transform: Callable | None = None, max_skip_fraction: float = 0.01) -> None:
        super().__init__(root, transform=transform)
        self.counter = SkipCounter(max_skip_fraction, where="imagefolder")

    @property
    def skipped(self) -> int:
        return self.counter.skipped

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for step in range(MAX_CONSECUTIVE_BAD):
            i = (index + step) % len(self.samples)
            self.counter.seen += 1
            try:
                return super().__getitem__(i)
            except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged files; all mean "skip"
                self.counter.skip(err, key=self.samples[i][0], url=self.root)
        raise RuntimeError(f"{MAX_CONSECUTIVE_BAD} images in a row from {self.samples[index][0]} on could not be "
                           f"read in {self.root}; check the data folder (see the warnings above)")
