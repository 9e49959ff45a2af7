"""Structure of the VQVAE: released key layout, Phi selection and sharing layouts, training forward, loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import manifest

from varianttrain.models import quant
from varianttrain.models.quant import MultiScaleResidualQuantizer, phi_index
from varianttrain.models.vqvae import VQVAE, VQVAEConfig

# Smallest legal model (ch 32): 64 px images, 4 x 4 latents, built in well under a second.
TINY = VQVAEConfig(vocab_size=32, z_channels=8, ch=32, patch_nums=(1, 2, 3, 4))


def _tiny(**overrides) -> VQVAE:
    torch.manual_seed(0)
    fields = {**TINY.__dict__, **overrides}
    return VQVAE(VQVAEConfig(**fields))


def test_released_keys_shapes_dtypes_in_order() -> None:
    ref = manifest("vae_keys.json")
    with torch.device("meta"):
        model = VQVAE(VQVAEConfig.released())
    got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    expected = [(k, v["shape"], v["dtype"]) for k, v in ref["keys"].items()]
    assert got == expected
    assert len(got) == ref["num_entries"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    for group, count in ref["param_groups"].items():
        assert sum(p.numel() for p in getattr(model, group).parameters()) == count, group
    buffers = {k for k, v in ref["keys"].items() if v["kind"] == "buffer"}
    assert {name for name, _ in model.named_buffers()} == buffers


@pytest.mark.parametrize(
    ("K", "expected"),
    [
        (10, [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]),
        (4, [0, 1, 2, 3]),
        (3, [0, 2, 3]),
        (5, [0, 1, 2, 2, 3]),
        (6, [0, 0, 1, 2, 3, 3]),
        (8, [0, 0, 1, 1, 2, 2, 3, 3]),
    ],
)
def test_phi_index_table_m4(K: int, expected: list[int]) -> None:
    """docs/REFERENCES.md B8: tie-sensitive nearest-tick rule (scales 2 and 7 of K = 10 resolve upwards)."""
    assert [phi_index(k, K, 4) for k in range(K)] == expected


def test_phi_index_other_counts() -> None:
    assert [phi_index(k, 10, 10) for k in range(10)] == list(range(10))  # share_quant_resi = 0: one per scale
    assert {phi_index(k, 10, 1) for k in range(10)} == {0}
    with pytest.raises(ValueError):
        phi_index(0, 1, 4)


@pytest.mark.parametrize("share", [0, 1, 4])
def test_phi_sharing_layouts(share: int) -> None:
    q = MultiScaleResidualQuantizer(vocab_size=16, Cvae=8, patch_nums=(1, 2, 3, 4, 5, 6), share_quant_resi=share)
    keys = [k for k in q.state_dict() if k.startswith("quant_resi.")]
    if share == 0:
        expected_prefixes = [f"quant_resi.{i}" for i in range(6)]
    elif share == 1:
        expected_prefixes = ["quant_resi.qresi"]
    else:
        expected_prefixes = [f"quant_resi.qresi_ls.{j}" for j in range(4)]
    assert keys == [f"{p}.{s}" for p in expected_prefixes for s in ("weight", "bias")]
    convs = q.quant_resi.convs()
    used = [convs.index(q.quant_resi.for_scale(k, 6)) for k in range(6)]
    assert used == {0: [0, 1, 2, 3, 4, 5], 1: [0] * 6, 4: [0, 0, 1, 2, 3, 3]}[share]
    assert list(q.state_dict())[0] == "ema_vocab_hit_SV" and q.ema_vocab_hit_SV.shape == (6, 16)


def test_phi_counts_and_identity() -> None:
    q = MultiScaleResidualQuantizer(16, 8, (1, 2, 4), share_quant_resi=0, default_qresi_counts=5)
    assert len(q.quant_resi.convs()) == 5
    q = MultiScaleResidualQuantizer(16, 8, (1, 2, 4), quant_resi=0.0)
    assert not [k for k in q.state_dict() if k.startswith("quant_resi.")]
    h = torch.randn(2, 8, 2, 2)
    up = F.interpolate(h, size=(4, 4), mode="bicubic", align_corners=False)
    assert torch.equal(q.phi(1, h), up)  # identity Phi, bicubic upsampling only
    h_last = torch.randn(2, 8, 4, 4)
    assert torch.equal(q.phi(2, h_last), h_last)  # last scale: never resampled


def test_phi_formula_and_weighted_codes() -> None:
    q = MultiScaleResidualQuantizer(16, 8, (1, 2, 4))
    h = torch.randn(3, 8, 2, 2)  # any float map, e.g. per-token weighted codes (DepthVAR)
    conv = q.quant_resi.for_scale(1, 3)
    up = F.interpolate(h, size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(q.phi(1, h), 0.5 * up + 0.5 * F.conv2d(up, conv.weight, conv.bias, padding=1))


def test_nearest_code_chunked_matches_bruteforce(monkeypatch) -> None:
    q = MultiScaleResidualQuantizer(64, 8, (1, 2, 4))
    torch.nn.init.normal_(q.embedding.weight)
    z = torch.randn(1000, 8)
    monkeypatch.setattr(quant, "_DISTANCE_CHUNK_ELEMENTS", 64 * 7)  # 7 rows per chunk, ragged last chunk
    idx = q.nearest_code(z)
    assert torch.equal(idx, torch.cdist(z.double(), q.embedding.weight.double()).argmin(dim=1))
    assert idx.dtype == torch.int64


def test_pyramid_override_and_last_scale_check() -> None:
    q = MultiScaleResidualQuantizer(16, 8, (1, 2, 3, 4))
    f = torch.randn(2, 8, 4, 4)
    idx = q.f_to_idxBl_or_fhat(f, to_fhat=False, v_patch_nums=(1, 4))
    assert [t.shape for t in idx] == [(2, 1), (2, 16)]
    with pytest.raises(ValueError):
        q.f_to_idxBl_or_fhat(f, to_fhat=False, v_patch_nums=(1, 2))


def test_default_construction_trainable_and_freeze() -> None:
    model = _tiny()
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert model.freeze() is model
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_training_forward_straight_through_and_gradients() -> None:
    model = _tiny()
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    recon, vq_loss, usage = model(img)
    assert recon.shape == img.shape and torch.isfinite(vq_loss) and vq_loss.ndim == 0
    assert usage.shape == (4,) and ((usage >= 0) & (usage <= 100)).all()
    assert model.quantize.ema_vocab_hit_SV.sum() > 0  # usage statistics updated in training mode

    # Value: the straight-through f_hat equals the inference f_hat (up to (f_hat - f) + f rounding, amplified
    # by the random decoder), so recon is the unclamped decode of it.
    with torch.no_grad():
        f_hat = model.quantize.f_to_idxBl_or_fhat(model.encode_latent(img), to_fhat=True)[-1]
        torch.testing.assert_close(recon, model.decoder(model.post_quant_conv(f_hat)), atol=1e-4, rtol=1e-4)

    (F.mse_loss(recon, img) + vq_loss).backward()
    for name in (
        "encoder.conv_in.weight",
        "quant_conv.weight",
        "post_quant_conv.weight",
        "decoder.conv_out.weight",
        "quantize.embedding.weight",
        "quantize.quant_resi.qresi_ls.0.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_straight_through_gradient_and_commitment_term() -> None:
    """d f_hat / d f is the identity; d vq_loss / d f is only the commitment term beta * 2 (f - f_hat_k) / N."""
    q = MultiScaleResidualQuantizer(32, 8, (1, 2, 4), beta=0.25)
    torch.nn.init.normal_(q.embedding.weight)
    f = torch.randn(2, 8, 4, 4, requires_grad=True)
    w = torch.randn(2, 8, 4, 4)
    f_hat, vq_loss, _ = q(f)
    (f_grad_ste,) = torch.autograd.grad((f_hat * w).sum(), f)
    torch.testing.assert_close(f_grad_ste, w)
    (f_grad_vq,) = torch.autograd.grad(vq_loss, f)
    with torch.no_grad():
        fhats = q.f_to_idxBl_or_fhat(f, to_fhat=True)
        expected = sum(0.25 * 2 * (f - fh) / f.numel() for fh in fhats) / len(fhats)
    torch.testing.assert_close(f_grad_vq, expected)


def test_eval_forward_leaves_usage_buffer() -> None:
    model = _tiny().eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert model.quantize.ema_vocab_hit_SV.abs().sum() == 0


def test_load_state_dict_foreign_scale_count() -> None:
    """A 10-scale-style ema_vocab_hit_SV (other K) is replaced by the model's own buffer; the rest loads strictly."""
    src = _tiny(patch_nums=(1, 2, 3, 4))
    src.quantize.ema_vocab_hit_SV.fill_(7.0)
    dst = _tiny(patch_nums=(1, 2, 4))
    torch.nn.init.zeros_(dst.quant_conv.weight)
    own = dst.quantize.ema_vocab_hit_SV.clone()
    sd = src.state_dict()
    dst.load_state_dict(sd, strict=True)
    assert torch.equal(dst.quantize.ema_vocab_hit_SV, own) and dst.quantize.ema_vocab_hit_SV.shape == (3, 32)
    assert torch.equal(dst.quant_conv.weight, src.quant_conv.weight)
    assert sd["quantize.ema_vocab_hit_SV"].shape == (4, 32)  # the caller's dict is untouched

    same = _tiny(patch_nums=(1, 2, 3, 4))
    same.load_state_dict(sd, strict=True)
    assert torch.equal(same.quantize.ema_vocab_hit_SV, sd["quantize.ema_vocab_hit_SV"])  # same K: loaded as is


def test_in_place_activations_change_no_value_and_no_gradient(monkeypatch) -> None:
    """The decoder's SiLUs run in place (as the official code's); outputs and gradients equal out-of-place SiLUs."""
    model = _tiny()
    z = torch.randn(2, TINY.z_channels, 4, 4, requires_grad=True)

    def decode_and_grad():
        z.grad = None
        img = model.decoder(z)
        img.square().mean().backward()
        return img.detach(), z.grad.clone(), model.decoder.conv_in.weight.grad.clone()

    in_place = decode_and_grad()
    model.zero_grad()
    silu = F.silu
    calls = []
    monkeypatch.setattr(F, "silu", lambda x, inplace=False: calls.append(inplace) or silu(x, inplace=False))
    out_of_place = decode_and_grad()
    assert calls and all(calls)  # every decoder activation asked for in place
    for a, b in zip(in_place, out_of_place, strict=True):
        assert torch.equal(a, b)
