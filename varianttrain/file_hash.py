"""SHA-256 of files: what names a set of weights (eval reports, resume checks, demo sums) and checks a download.

One streamed reader for every caller: a multi-GB checkpoint is hashed in fixed-size chunks, never read whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

CHUNK = 8 << 20


def sha256_file(path: str | Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file; `progress(bytes)` is called after every chunk (for a progress bar)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


@lru_cache(maxsize=8)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def cached_sha256(path: str | Path) -> str:
    """`sha256_file`, computed once per process for an unchanged file (same resolved path, size and mtime): the
    training preflight and the module both ask for the VQVAE's hash."""
    st = Path(path).stat()
    return _sha256_of_version(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
