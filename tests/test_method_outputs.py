"""Every sampling method draws the same tokens as when tests/data/method_indices.json was written.

The file holds the indices each method sampled on seeded tiny models (tests/data/make_method_indices.py, per-image
and shared seeds, two sampling settings). Speed work on the sampler, the RNG, the model's masked path or the methods
must leave them bit-identical; regenerate the file only for an intended change of outputs, and say so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))

import make_method_indices as fixture  # noqa: E402


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads((DATA / "method_indices.json").read_text())


@pytest.fixture(scope="module")
def sampled() -> dict:
    threads = torch.get_num_threads()
    try:
        return fixture.sample_all()  # one thread, like the recording
    finally:
        torch.set_num_threads(threads)


def test_every_case_is_recorded(recorded, sampled):
    assert sorted(sampled) == sorted(recorded)
    assert len(recorded) == len(fixture.SAMPLINGS) * (len(fixture.CASES) + 1) * 2


@pytest.mark.parametrize("sampling", list(fixture.SAMPLINGS))
def test_indices_are_bit_identical(recorded, sampled, sampling):
    differing = [key for key in recorded if key.startswith(sampling + "/") and sampled[key] != recorded[key]]
    assert not differing, f"sampled tokens changed: {differing}"
