"""The VAR port against the official code's outputs; file contents and tolerances: docs/REFERENCES.md#golden-vectors."""

from __future__ import annotations

import torch

from varianttrain.losses import var_loss
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import generate


def _assert_close(actual, expected, atol, rtol=0.0, what=""):
    diff = (actual.float() - expected.float()).abs().max().item()
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=f"{what}: max diff {diff}")


def test_teacher_forcing_logits(golden, golden_models):
    _, var = golden_models
    with torch.no_grad():
        logits = var(golden["label_B"], golden["x_BLCv_wo_first_l"])
        uncond = var(torch.full_like(golden["label_B"], var.num_classes), golden["x_BLCv_wo_first_l"])
    _assert_close(logits, golden["logits_BLV"], 1e-4, 1e-4, "logits")
    _assert_close(uncond, golden["logits_BLV_uncond"], 1e-4, 1e-4, "uncond logits")


def test_training_loss(golden, golden_models):
    _, var = golden_models
    target = torch.cat(golden["idx_Bl"], dim=1)
    with torch.no_grad():
        logits = var(golden["label_B"], golden["x_BLCv_wo_first_l"])
    for smoothing, key in ((0.0, "train_loss_ls0"), (0.1, "train_loss_ls0.1")):
        loss = var_loss(logits, target, label_smoothing=smoothing)
        assert abs(loss.item() - float(golden[key])) < 1e-5, (key, loss.item(), float(golden[key]))


def _ar_run(golden, golden_models, args_key):
    vqvae, var = golden_models
    args = golden[args_key]
    sampling = SamplingConfig(cfg=float(args["cfg"]), top_k=int(args["top_k"]), top_p=float(args["top_p"]),
                              more_smooth=bool(args["more_smooth"]))
    labels = torch.as_tensor(args["label_B"], dtype=torch.long).view(-1)
    assert labels.numel() == int(args["B"])
    return generate(var, vqvae, labels, sampling, TokenRNG.shared_seed(int(args["g_seed"])), record_logits=True)


def test_seeded_sampling_reproduces_official_indices_logits_and_image(golden, golden_models):
    out = _ar_run(golden, golden_models, "ar_args")
    for k, (idx, ref) in enumerate(zip(out.idx_Bl, golden["ar_idx_Bl"], strict=True)):
        assert torch.equal(idx, ref), f"scale {k}: sampled indices differ"
    for k, (raw, ref) in enumerate(zip(out.raw_logits, golden["ar_raw_logits_per_scale"], strict=True)):
        _assert_close(raw, ref, 1e-4, 1e-4, f"raw logits scale {k}")
    for k, (guided, ref) in enumerate(zip(out.guided_logits, golden["ar_guided_logits_per_scale"], strict=True)):
        _assert_close(guided, ref, 2e-4, 0.0, f"guided logits scale {k}")
    _assert_close(out.images_B3HW, golden["ar_img"], 2e-4, 0.0, "ar_img")


def test_gumbel_smoothing_path(golden, golden_models):
    out = _ar_run(golden, golden_models, "ar_smooth_args")
    _assert_close(out.images_B3HW, golden["ar_smooth_img"], 2e-4, 0.0, "ar_smooth_img")


def test_kv_cached_logits_equal_teacher_forcing_on_sampled_tokens(golden, golden_models):
    """The cached sampler and the masked teacher-forcing forward compute the same function (block-causal
    attention, [VAR §3.2])."""
    vqvae, var = golden_models
    out = _ar_run(golden, golden_models, "ar_args")
    x_in = vqvae.quantize.idxBl_to_var_input(out.idx_Bl)
    B = out.idx_Bl[0].shape[0]
    labels = torch.as_tensor(golden["ar_args"]["label_B"]).view(-1)
    with torch.no_grad():
        cond = var(labels, x_in)
        uncond = var(torch.full_like(labels, var.num_classes), x_in)
    cached = torch.cat(out.raw_logits, dim=1)
    _assert_close(cached[:B], cond, 1e-4, 1e-4, "cond")
    _assert_close(cached[B:], uncond, 1e-4, 1e-4, "uncond")
