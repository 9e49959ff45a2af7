"""Shared fixtures: where the reference material lives, the golden vectors of the official code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Outputs of the official code that the tests compare against (format: tests/data/README.md). Everything the
# default suite reads lives inside the repository.
TEST_DATA = REPO_ROOT / "tests" / "data"


def golden_path() -> Path:
    """The golden file: $VARIANTTRAIN_GOLDEN when set, else tests/data/golden_small.pt."""
    return Path(os.environ.get("VARIANTTRAIN_GOLDEN", TEST_DATA / "golden_small.pt"))


@pytest.fixture(scope="session")
def test_data() -> Path:
    """tests/data: key manifests of the released checkpoints and the golden vectors."""
    return TEST_DATA


def manifest(name: str) -> dict:
    """A key manifest of tests/data (missing = failure, never a skip)."""
    import json

    path = TEST_DATA / name
    if not path.is_file():
        pytest.fail(f"{path} is missing from the checkout (it is tracked in git: restore it with git checkout)")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def golden() -> dict:
    """The golden vectors (format: tests/data/README.md). Missing file = failure, never a skip."""
    path = golden_path()
    if not path.is_file():
        pytest.fail(f"golden file {path} not found; it is tracked in tests/data (git checkout restores it), or set "
                    "VARIANTTRAIN_GOLDEN to another file of the same format")
    return torch.load(path, weights_only=True, map_location="cpu")


@pytest.fixture(autouse=True)
def _restore_torch_defaults():
    """Keep tests independent: restore default dtype and thread count after each test."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def golden_models(golden):
    """(vqvae, var) built from the golden file's stored build arguments, weights loaded strictly, eval mode."""
    from varianttrain.models.official_args import var_config_from_official
    from varianttrain.models.var import VAR
    from varianttrain.models.vqvae import VQVAE, VQVAEConfig

    vae_cfg = VQVAEConfig.from_official_kwargs(golden["vae_build_args"])
    vqvae = VQVAE(vae_cfg).freeze()
    vqvae.load_state_dict(golden["vae_state_dict"], strict=True)
    var_cfg = var_config_from_official(golden["var_build_args"], vae_cfg.vocab_size, vae_cfg.z_channels)
    var = VAR(var_cfg).eval()
    var.load_state_dict(golden["var_state_dict"], strict=True)
    return vqvae, var


def random_tiny_var(depth: int, patch_nums: tuple[int, ...], vocab_size: int, seed: int = 0,
                    num_classes: int = 5, z_channels: int = 8, scale: float = 0.2):
    """A tiny VAR whose every weight is redrawn N(0, scale^2), so no block is near the identity (the official init
    makes every block ~identity, which would hide bugs in code that skips blocks)."""
    from varianttrain.models.var import VAR, VARConfig

    torch.manual_seed(seed)
    model = VAR(VARConfig.for_depth(depth, embed_dim=64, num_heads=2, patch_nums=patch_nums,
                                    num_classes=num_classes, vocab_size=vocab_size, z_channels=z_channels,
                                    drop_path_rate=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return model.eval()


def tiny_vqvae(patch_nums: tuple[int, ...], vocab_size: int, seed: int = 1, z_channels: int = 8):
    """A frozen randomly initialised VQVAE of the smallest legal width (ch 32)."""
    from varianttrain.models.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(seed)
    return VQVAE(VQVAEConfig(vocab_size=vocab_size, z_channels=z_channels, ch=32, patch_nums=patch_nums)).freeze()


def loss_recorder():
    """A Lightning callback that records the training loss of every step (in `.losses`)."""
    import lightning as L

    class LossRecorder(L.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(outputs["loss"]))

    return LossRecorder()


def quiet_cpu_trainer(steps: int, callbacks=(), **kwargs):
    """A bare CPU Lightning Trainer for module tests: no logger, checkpoints, progress bar or sanity check."""
    import lightning as L

    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                     num_sanity_val_steps=0, **kwargs)


class FixedBatch(torch.utils.data.Dataset):
    """The same batch `length` times: an overfitting check sees one fixed set of images every step."""

    def __init__(self, img_B3HW: torch.Tensor, label_B: torch.Tensor, length: int) -> None:
        self.batch, self.length = (img_B3HW, label_B), length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch
