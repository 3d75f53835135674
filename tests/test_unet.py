"""The DDPM UNet: shapes, DDPM's parameter count, conditioning, initialisation, dtypes and layouts."""

import pytest
import torch

from minidiff.unet import PRESETS, GroupNorm32, UNet, channel_means, timestep_embedding


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


@pytest.mark.parametrize("mode", ["embedding", "middle"])
def test_mean_input_starts_as_the_plain_network_and_reads_only_the_channel_means(mode):
    """mean_input hands the input's channel means to the network through a zero-initialised MLP:
    at init the network is exactly the one without it. With the MLP's weights set, the output
    moves, a brighter input moves it differently, and (embedding) the conditioning vector depends
    on the channel means alone: another image with the same means gets the same vector."""
    plain = randomized(UNet.from_preset("tiny", num_classes=3))
    model = UNet.from_preset("tiny", num_classes=3, mean_input=mode).eval()
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("mean_mlp.") for k in missing)
    x, t = inputs(model)
    y = torch.tensor([0, 2])
    assert torch.equal(model(x, t, y), plain(x, t, y))
    assert UNet(**model.config).config["mean_input"] == mode and "mean_input" not in plain.config

    with torch.no_grad():
        for p in model.mean_mlp.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    means = x.mean(dim=(2, 3), keepdim=True)
    same = means + (x - means).flip(-1).roll(3, -2)  # the same channel means as x, another image
    added = {name: model(z, t, y) - plain(z, t, y) for name, z in (("x", x), ("brighter", x + 0.5))}
    if mode == "embedding":  # the conditioning vector itself depends on the channel means alone
        torch.testing.assert_close(model.embed(t, y, 2, same), model.embed(t, y, 2, x), atol=1e-6, rtol=0)
        assert not torch.allclose(model.embed(t, y, 2, x + 0.5), model.embed(t, y, 2, x), atol=1e-3)
    else:  # the middle block's input is the plain network's plus the MLP of the channel means, exactly
        seen = {}
        for name, net in (("model", model), ("plain", plain)):
            hook = net.mid1.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0]))
            net(x, t, y)
            hook.remove()
        expected = model.mean_mlp(channel_means(x))[:, :, None, None]
        torch.testing.assert_close(seen["model"] - seen["plain"], expected.expand_as(seen["plain"]), atol=1e-5, rtol=1e-4)
    assert added["x"].abs().max() > 1e-3 and not torch.allclose(added["brighter"], added["x"], atol=1e-3)


def test_channel_means_are_in_units_of_pure_noise():
    noise = torch.randn(4000, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert abs(torch.sinh(channel_means(noise)).std().item() - 1) < 0.03
    flat = torch.full((1, 3, 16, 16), 0.25)
    torch.testing.assert_close(channel_means(flat), torch.asinh(torch.full((1, 3), 0.25 * 16)))


def test_unknown_mean_input_is_refused():
    with pytest.raises(ValueError, match="mean_input must be None, 'embedding' or 'middle'"):
        UNet.from_preset("tiny", mean_input="head")


def test_output_shift_and_level_bias_start_as_the_plain_network_and_add_one_constant_per_channel():
    """output_shift adds Linear(conditioning vector) to each output channel, level_bias a learnt
    constant per band of timesteps (bins of 1000 / level_bias steps) and channel: both start at
    zero (the untrained network is the plain one, exactly), and what they add is the same at every
    pixel, set by (t, y) alone for the shift and by t's band alone for the bias."""
    plain = randomized(UNet.from_preset("tiny", num_classes=3))
    x, t = inputs(plain)
    y = torch.tensor([0, 2])
    for extra in (dict(output_shift=True), dict(level_bias=50)):
        model = UNet.from_preset("tiny", num_classes=3, **extra).eval()
        missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
        assert missing and all(k.split(".")[0] in ("shift", "level_bias") for k in missing)
        assert torch.equal(model(x, t, y), plain(x, t, y))
        assert UNet(**model.config).config == model.config and set(model.config) - set(plain.config) == set(extra)
        with torch.no_grad():
            for p in (model.shift.parameters() if "output_shift" in extra else [model.level_bias]):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        added = model(x, t, y) - plain(x, t, y)
        assert added.abs().min() > 0
        torch.testing.assert_close(added, added[:, :, :1, :1].expand_as(added), atol=1e-5, rtol=0)  # flat
        other = model(x.flip(-1) + 0.3, t, y) - plain(x.flip(-1) + 0.3, t, y)  # another input, same (t, y)
        torch.testing.assert_close(other, added, atol=1e-5, rtol=1e-5)
        if "level_bias" in extra:  # bins of 20 steps: t and t' in the same band add the same constant
            same_band = model(x, t // 20 * 20, y) - plain(x, t // 20 * 20, y)
            expected = model.level_bias[t // 20][:, :, None, None].expand_as(added)
            torch.testing.assert_close(added, expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(same_band, added, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="output_shift must be True or False"):
        UNet.from_preset("tiny", output_shift="yes")
