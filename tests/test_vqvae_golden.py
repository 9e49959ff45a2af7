"""Parity of the VQVAE / multi-scale quantiser with the official code (golden vectors).

Everything is derived from the golden file's own build arguments and tensors, so any file of the same format works
(env var VARIANTTRAIN_GOLDEN). Contents and tolerances: docs/REFERENCES.md#golden-vectors.
"""

from __future__ import annotations

import pytest
import torch

from varianttrain.models.vqvae import VQVAE, VQVAEConfig

ATOL_LATENT = 1e-5  # enc_f, fhat_per_scale, x_BLCv_wo_first_l
ATOL_IMAGE = 2e-4  # decoded images (about 4 % of pixels sit at the clamp bounds)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def vae(golden: dict) -> VQVAE:
    model = VQVAE(VQVAEConfig.from_official_kwargs(golden["vae_build_args"])).freeze()
    model.load_state_dict(golden["vae_state_dict"], strict=True)
    return model


def test_config_from_build_args(golden: dict, vae: VQVAE) -> None:
    args = golden["vae_build_args"]
    assert vae.patch_nums == tuple(args["v_patch_nums"])
    assert vae.vocab_size == args["vocab_size"] and vae.Cvae == args["z_channels"]
    assert golden["img"].shape[-1] == vae.config.image_size


@torch.no_grad()
def test_encoder_latent(golden: dict, vae: VQVAE) -> None:
    assert _max_err(vae.encode_latent(golden["img"]), golden["enc_f"]) <= ATOL_LATENT


@torch.no_grad()
def test_img_to_idxBl_exact(golden: dict, vae: VQVAE) -> None:
    idx_list = vae.img_to_idxBl(golden["img"])
    assert len(idx_list) == len(golden["idx_Bl"])
    for got, ref in zip(idx_list, golden["idx_Bl"], strict=True):
        assert got.dtype == torch.int64 and torch.equal(got, ref)


@torch.no_grad()
def test_fhat_per_scale(golden: dict, vae: VQVAE) -> None:
    fhats = vae.quantize.f_to_idxBl_or_fhat(golden["enc_f"], to_fhat=True)
    assert len(fhats) == len(golden["fhat_per_scale"])
    for got, ref in zip(fhats, golden["fhat_per_scale"], strict=True):
        assert _max_err(got, ref) <= ATOL_LATENT


@torch.no_grad()
def test_training_quantiser_matches_inference(golden: dict, vae: VQVAE) -> None:
    """The training forward runs the same residual loop: its (straight-through) f_hat has the inference value."""
    f_hat_BChw, vq_loss, usage_K = vae.quantize(golden["enc_f"])
    assert _max_err(f_hat_BChw, golden["fhat_per_scale"][-1]) <= ATOL_LATENT
    beta = golden["vae_build_args"].get("beta", 0.25)
    ref_loss = sum((1 + beta) * torch.mean((f - golden["enc_f"]) ** 2) for f in golden["fhat_per_scale"])
    assert abs(vq_loss.item() - ref_loss.item() / len(golden["fhat_per_scale"])) <= 1e-5 * max(1.0, ref_loss.item())
    assert usage_K.shape == (len(vae.patch_nums),)


@torch.no_grad()
def test_idxBl_to_var_input(golden: dict, vae: VQVAE) -> None:
    x_BLCv = vae.quantize.idxBl_to_var_input(golden["idx_Bl"])
    assert _max_err(x_BLCv, golden["x_BLCv_wo_first_l"]) <= ATOL_LATENT


@torch.no_grad()
def test_autoregressive_update_reproduces_fhat_and_inputs(golden: dict, vae: VQVAE) -> None:
    """get_next_autoregressive_input, fed the golden tokens, walks through fhat_per_scale and the VAR inputs."""
    q = vae.quantize
    K, B = len(q.patch_nums), golden["img"].shape[0]
    f_hat_BChw = torch.zeros_like(golden["enc_f"])
    x_ref = golden["x_BLCv_wo_first_l"]
    start = 0
    for k in range(K):
        f_hat_BChw, next_BChw = q.get_next_autoregressive_input(k, K, f_hat_BChw, q.embed(golden["idx_Bl"][k]))
        assert _max_err(f_hat_BChw, golden["fhat_per_scale"][k]) <= ATOL_LATENT
        if k < K - 1:
            n = q.patch_nums[k + 1] ** 2
            got_BlC = next_BChw.reshape(B, q.Cvae, n).transpose(1, 2)
            assert _max_err(got_BlC, x_ref[:, start : start + n]) <= ATOL_LATENT
            start += n
        else:
            assert next_BChw is f_hat_BChw
    assert start == x_ref.shape[1]


@torch.no_grad()
def test_recon_images(golden: dict, vae: VQVAE) -> None:
    per_scale = vae.idxBl_to_img(golden["idx_Bl"], same_shape=True, last_one=False)
    assert len(per_scale) == len(golden["recon_img_per_scale"])
    for got, ref in zip(per_scale, golden["recon_img_per_scale"], strict=True):
        assert _max_err(got, ref) <= ATOL_IMAGE
    last = vae.idxBl_to_img(golden["idx_Bl"], same_shape=True, last_one=True)
    assert _max_err(last, golden["recon_img_last"]) <= ATOL_IMAGE
    assert _max_err(vae.fhat_to_img(golden["fhat_per_scale"][-1]), golden["recon_img_last"]) <= ATOL_IMAGE
    assert _max_err(vae.img_to_reconstructed_img(golden["img"], last_one=True), golden["recon_img_last"]) <= ATOL_IMAGE


@torch.no_grad()
def test_ar_tokens_decode_to_ar_img(golden: dict, vae: VQVAE) -> None:
    """checks['ar_img_vs_idxBl_to_img']: decoding the sampled tokens, mapped to [0, 1], gives the sampler's image."""
    img_B3HW = vae.idxBl_to_img(golden["ar_idx_Bl"], same_shape=True, last_one=True).add(1).mul(0.5)
    assert _max_err(img_B3HW, golden["ar_img"]) <= ATOL_IMAGE
