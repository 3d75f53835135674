"""The DDPM UNet: shapes, DDPM's parameter count, conditioning, initialisation, dtypes and layouts."""

import pytest
import torch

from minidiff.unet import PRESETS, GroupNorm32, UNet, timestep_embedding


def randomized(model: UNet, seed: int = 0) -> UNet:
    """Give every parameter a random value, so zero-initialised layers no longer hide the input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def inputs(model: UNet, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    c, s = model.config["in_channels"], model.config["image_size"]
    x = torch.randn(batch, c, s, s, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    return x, t


@pytest.mark.parametrize("overrides", [
    {},
    {"in_channels": 1, "out_channels": 2},
    {"image_size": 32, "channel_mults": (1, 2, 2), "attn_resolutions": (16, 8), "num_res_blocks": 2},
    {"num_classes": 10},
    {"num_heads": 1, "attn_resolutions": ()},
])
def test_output_shape_matches_input(overrides):
    model = randomized(UNet.from_preset("tiny", **overrides))
    x, t = inputs(model, batch=3)
    out = model(x, t)
    assert out.shape == (3, model.config["out_channels"], *x.shape[2:])
    assert torch.isfinite(out).all()


def test_ddpm_cifar10_parameter_count():
    # Ho et al. 2020 report 35.7M parameters for the CIFAR-10 model; the exact count of their
    # network (ch 128, mults 1,2,2,2, 2 res blocks, attention at 16x16) is 35,746,307.
    assert UNet.from_preset("ddpm-cifar10").num_parameters() == 35_746_307


def test_presets_have_the_documented_sizes():
    assert UNet.from_preset("tiny").num_parameters() < 20_000
    assert set(PRESETS) >= {"ddpm-cifar10", "small", "tiny"}


def test_output_is_exactly_zero_at_init():
    # Zero-initialised output conv: the untrained model predicts 0, the mean of any eps/v target.
    model = UNet.from_preset("tiny", num_classes=3)
    x, t = inputs(model)
    assert torch.equal(model(x, t, torch.tensor([0, 2])), torch.zeros_like(x))


def test_config_rebuilds_the_same_model():
    model = randomized(UNet.from_preset("tiny", num_classes=4))
    clone = UNet(**model.config).eval()
    clone.load_state_dict(model.state_dict())
    x, t = inputs(model)
    y = torch.tensor([1, 3])
    assert torch.equal(model(x, t, y), clone(x, t, y))


def test_class_conditioning_changes_output_and_none_is_the_null_class():
    model = randomized(UNet.from_preset("tiny", num_classes=5))
    x, t = inputs(model)
    out_a = model(x, t, torch.tensor([0, 0]))
    out_b = model(x, t, torch.tensor([1, 1]))
    assert (out_a - out_b).abs().max() > 1e-3
    null = torch.full((2,), 5, dtype=torch.long)  # index num_classes is the null class
    assert torch.equal(model(x, t, None), model(x, t, null))


def test_labels_on_an_unconditional_model_are_refused():
    model = UNet.from_preset("tiny")
    x, t = inputs(model)
    with pytest.raises(ValueError, match="num_classes=None"):
        model(x, t, torch.tensor([0, 1]))


def test_timestep_embedding_distinguishes_every_t():
    emb = timestep_embedding(torch.arange(1000), 128)
    assert emb.shape == (1000, 128)
    dist = torch.cdist(emb, emb) + torch.eye(1000) * 1e9
    assert dist.min() > 1e-2  # no two timesteps share an embedding
    # t = 0: the sines are 0 and the cosines 1.
    assert torch.equal(emb[0], torch.cat([torch.zeros(64), torch.ones(64)]))


def test_model_output_depends_on_t():
    model = randomized(UNet.from_preset("tiny"))
    x, _ = inputs(model)
    out0 = model(x, torch.tensor([0, 0]))
    out1 = model(x, torch.tensor([1, 1]))
    assert (out0 - out1).abs().max() > 1e-4


def test_scalar_t_is_broadcast_to_the_batch():
    model = randomized(UNet.from_preset("tiny"))
    x, _ = inputs(model)
    assert torch.equal(model(x, torch.tensor(7)), model(x, torch.tensor([7, 7])))


@pytest.mark.parametrize("overrides, message", [
    ({"image_size": 18, "channel_mults": (1, 2, 2)}, "not divisible by 4"),
    ({"attn_resolutions": (4,)}, r"attn_resolutions \[4\] never occur"),
    ({"base_channels": 6, "norm_groups": 4}, "not divisible by norm_groups=4"),
    ({"num_heads": 3}, "not divisible by num_heads=3"),
    ({"channel_mults": ()}, "channel_mults must be"),
])
def test_bad_config_raises_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNet.from_preset("tiny", **overrides)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="ddpm-cifar10"):
        UNet.from_preset("huge")


def test_input_size_not_divisible_is_refused_in_forward():
    model = UNet.from_preset("tiny")
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(1, 3, 15, 16), torch.tensor([0]))


def test_groupnorm32_computes_in_float32_and_returns_input_dtype():
    norm = GroupNorm32(2, 4)
    x = torch.randn(2, 4, 3, 3, dtype=torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = torch.nn.functional.group_norm(x.float(), 2, norm.weight, norm.bias, eps=1e-6).bfloat16()
    assert torch.equal(out, expected)


def test_bf16_autocast_is_close_to_float32():
    model = randomized(UNet.from_preset("tiny", num_classes=3))
    x, t = inputs(model)
    y = torch.tensor([0, 2])
    ref = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: relative error of a few 1e-3 per op, a few 1e-2 at the end.
    assert (out.float() - ref).norm() / ref.norm() < 5e-2


def test_channels_last_gives_the_same_output():
    model = randomized(UNet.from_preset("tiny"))
    x, t = inputs(model)
    ref = model(x, t)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter():
    # After a random init every parameter sits on the path from input to loss.
    model = randomized(UNet.from_preset("tiny", num_classes=2)).train()
    x, t = inputs(model)
    model(x, t, torch.tensor([0, 1])).square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert unused == []


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = randomized(UNet.from_preset("tiny", num_classes=3))
    x, t = inputs(model)
    y = torch.tensor([1, 2])
    ref = model(x, t, y)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x, t, y), ref, rtol=1e-4, atol=1e-5)
    # And it trains: one backward through the compiled graph.
    compiled.train()(x, t, y).square().mean().backward()
    assert model.conv_out.weight.grad is not None


def test_patch_stem_is_space_to_depth_around_a_pixel_unet():
    """patch_size=2: the network is a 16x16 UNet on 12 channels, fed pixel_unshuffle(x) and
    folded back with pixel_shuffle; the same weights in a patch-1 UNet give the same output."""
    torch.manual_seed(0)
    common = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(),
                  dropout=0.0, norm_groups=4, num_classes=10)
    patched = UNet(in_channels=3, out_channels=3, image_size=32, patch_size=2, **common)
    plain = UNet(in_channels=12, out_channels=12, image_size=16, **common)
    for p in patched.conv_out.parameters():
        torch.nn.init.normal_(p)  # zero-initialised: make the comparison see the output layer
    plain.load_state_dict(patched.state_dict())
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 900]), torch.tensor([1, 7])
    expected = torch.nn.functional.pixel_shuffle(plain(torch.nn.functional.pixel_unshuffle(x, 2), t, y), 2)
    assert torch.allclose(patched(x, t, y), expected, atol=1e-6)
    assert patched(x, t, y).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="patch_size"):
        UNet(image_size=30, patch_size=4, **common)
