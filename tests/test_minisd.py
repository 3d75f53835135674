"""The miniature Stable Diffusion: built here from the built-in shapes, then fine-tuned with the fixes.

One module fixture runs the real build with few steps (about 30 s on one core) and a short
fine-tune of it through train_latent.py's loop; the tests ask what a student would: do the
captions say the background, does the folder load as Stable Diffusion's does, has the VAE learnt
to reconstruct, does the fine-tune lower the held-out loss, does its export load in a stock
pipeline. Whether the fine-tune follows "nearly black" and "nearly white" better than the base
needs a base that has learnt to read its captions, which takes the full build: that test is
marked slow (12 minutes on one core: the README's build and fine-tune, then the comparison).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import StableDiffusionPipeline  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

from minidiff.latent import stable_diffusion as latent, train as latent_train, minisd, minisd_eval, minisd_text  # noqa: E402
from minidiff.training.data import builtin_shapes, to_float  # noqa: E402
from scripts import load_script  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A miniature built with few steps, and its report."""
    folder = tmp_path_factory.mktemp("minisd") / "base"
    report = minisd.build(folder, vae_steps=100, unet_steps=60, images=1000, finetune_images=128,
                          heldout_images=64, progress=False)
    return folder, report


@pytest.fixture(scope="module")
def tuned(built, tmp_path_factory):
    """The base fine-tuned with the fixes (zero SNR, v) by train_latent.py's own loop."""
    folder, _ = built
    out = tmp_path_factory.mktemp("minisd") / "tuned"
    cfg = latent_train.LatentTrainConfig(
        pretrained=str(folder), data_dir=str(folder / "finetune_images"), output_dir=str(out), resolution=32,
        max_steps=60, batch_size=32, lr=3e-4, ema_decay=0.99, workers=0, device="cpu",
        cache_dir=str(out.parent / "cache"), checkpoint_every=1000, progress=False)
    return latent_train.train(cfg).output_dir


# ---------------------------------------------------------------------------------- captions


def test_captions_name_colour_shape_and_the_background_brightness():
    assert minisd_text.caption(0, -0.8) == "a red disc on a nearly black background"
    assert minisd_text.caption(9, 0.8) == "a lime pair of dots on a nearly white background"
    assert minisd_text.caption(6, 0.0) == "an orange striped square on a mid grey background"
    words = [minisd_text.background_word(b) for b in (-0.9, -0.55, -0.54, -0.2, 0.0, 0.2, 0.53, 0.54, 0.9)]
    assert words == ["nearly black", "nearly black", "dark grey", "dark grey", "mid grey", "light grey",
                     "light grey", "nearly white", "nearly white"]
    data = builtin_shapes(200, seed=3)
    brightness = to_float(data.images).mean((1, 2, 3))
    for text, b in zip(minisd_text.captions_of(data), brightness.tolist()):
        assert text.endswith(f"on a {minisd_text.background_word(b)} background")
    assert len(set(minisd_text.all_captions())) == 50


def test_bpe_merges_the_most_frequent_pair_first():
    """Sennrich et al.'s example: "est" is the commonest ending, so e+s then es+t</w> come first."""
    merges = minisd_text.learn_bpe(["low"] * 5 + ["lower"] * 2 + ["newest"] * 6 + ["widest"] * 3)
    assert merges[:2] == [("e", "s"), ("es", "t</w>")]
    assert ("low", "er</w>") in merges or ("lo", "wer</w>") in merges or ("l", "ower</w>") in merges


def test_stock_clip_tokenizer_reads_the_vocabulary_one_token_per_word(built):
    folder, _ = built
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for text in minisd_text.all_captions():
        ids = tokenizer(text).input_ids
        assert len(ids) == len(text.split()) + 2 <= minisd_text.MAX_TOKENS  # one per word, plus start and end
        assert end not in ids[1:-1]  # <|endoftext|> is also the unknown token: none inside
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(tokenizer("a zebra").input_ids) == 2 + 1 + 5  # unseen words fall back to characters


# ------------------------------------------------------------------------------------- build


def test_the_build_is_stable_diffusion_2_1_base_in_layout_and_recipe(built):
    folder, report = built
    assert latent.check_checkpoint_folder(folder) == folder
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"] and index["scheduler"][1] == "PNDMScheduler"
    config = latent.read_scheduler_config(folder)
    assert latent.prediction_of(config) == "eps" and config["timestep_spacing"] == "leading"
    assert config["steps_offset"] == 1 and not config.get("rescale_betas_zero_snr", False)
    # Table 1, Stable Diffusion row: the base is trained where sqrt(alpha_bar_T) = 0.068265
    flawed = latent.base_schedule(config, zero_snr=False)
    assert flawed.alphas_cumprod[-1].sqrt().item() == pytest.approx(0.068265, abs=5e-7)
    assert report["parameters"]["unet"] == 1_489_028


def test_vae_maps_32_pixels_to_8x8x4_latents_of_unit_spread_and_reconstructs(built):
    folder, report = built
    components = latent.load_components(folder)
    assert components.vae_factor == 4
    data = builtin_shapes(256, seed=7)
    z = latent.encode_images(components, to_float(data.images), "sample", torch.Generator().manual_seed(0))
    assert z.shape == (256, 4, 8, 8)
    assert 0.8 < z.std().item() < 1.25  # the scaling factor does for the miniature what 0.18215 does for SD
    real = to_float(data.images)
    recon = latent.decode_latents(components, latent.encode_images(components, real, "mean"))
    mse = (recon - real).pow(2).mean().item()
    variance = real.var(0).mean().item()  # predicting the mean image would score this
    assert mse < 0.25 * variance and mse == pytest.approx(report["vae_heldout_mse"], rel=0.5)
    # brightness, the quantity the experiment is about, survives the autoencoder
    error = (minisd_eval.background_brightness(recon) - minisd_eval.background_brightness(real)).abs().mean()
    assert error < 0.1


def test_build_refuses_bad_out_in_one_line_and_writes_nothing(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    for out, message in ((file, "is a file"), (full, "already holds files")):
        with pytest.raises(SystemExit) as exit_info:
            minisd.main(["build", "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        minisd.main(["build", "--out", str(tmp_path / "new"), "--unet-steps", "0"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]  # no half folder


# ----------------------------------------------------------------------------------- fine-tune


def test_a_short_fine_tune_lowers_the_held_out_v_loss(built, tuned):
    """The fixed objective (v on the zero-SNR schedule), measured on held-out images at fixed
    timesteps and noise: the eps-trained base scores badly, 60 steps of fine-tuning much better."""
    folder, _ = built
    before = minisd_eval.heldout_loss(folder, folder / "heldout_images")
    after = minisd_eval.heldout_loss(tuned, folder / "heldout_images")
    print(f"held-out v loss on the zero-SNR schedule: base {before:.3f}, fine-tuned {after:.3f}")
    assert after < 0.7 * before


def test_export_loads_in_a_stock_pipeline_at_the_models_own_size(built, tuned):
    folder, _ = built
    pipe = StableDiffusionPipeline.from_pretrained(tuned, safety_checker=None)
    scheduler = pipe.scheduler.config
    assert scheduler.rescale_betas_zero_snr and scheduler.prediction_type == "v_prediction"
    assert scheduler.timestep_spacing == "trailing"
    pipe.set_progress_bar_config(disable=True)
    images = pipe(minisd_eval.prompts_for("nearly black", repeats=1)[:2], num_inference_steps=4, guidance_scale=7.5,
                  guidance_rescale=0.7, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    # the fine-tune changed only the UNet: the other parts are the base's, byte for byte
    for part in ("vae", "text_encoder", "tokenizer"):
        for file in (folder / part).iterdir():
            assert (tuned / part / file.name).read_bytes() == file.read_bytes(), file


def train_latent_cli():
    return load_script("train_latent.py")


@pytest.mark.slow
def test_the_fine_tune_reaches_black_and_white_where_the_base_falls_short(tmp_path):
    """The README's build and fine-tune at their defaults, then both drawn without guidance
    (where the base's flaw shows; guidance 7.5 saturates both), by minidiff's sampler and by a
    stock StableDiffusionPipeline: the fine-tune's backgrounds lie closer to those of the
    training images captioned "nearly black" and "nearly white"."""
    base, tuned = tmp_path / "minisd", tmp_path / "minisd-fixed"
    minisd.main(["build", "--out", str(base), "--threads", "1", "--no-progress"])
    train_latent_cli().main(["--pretrained", str(base), "--data-dir", str(base / "finetune_images"),
                             "--output-dir", str(tuned), *FINE_TUNE_FLAGS, "--cache-dir", str(tmp_path / "cache"),
                             "--no-progress"])
    result = minisd_eval.compare(base, tuned, tmp_path / "compare", guidance=1.0)
    for word in ("nearly black", "nearly white"):
        base_row, tuned_row = result[f"base / {word}"], result[f"fine-tuned / {word}"]
        own = base_row["captions_mean"]
        assert abs(tuned_row["mean"] - own) < abs(base_row["mean"] - own), (word, base_row, tuned_row)
        assert abs(tuned_row["mean"] - own) < 0.05
        # the same with diffusers' own pipelines: PNDM with leading steps for the base, DDIM trailing for the export
        stock = {}
        for name, folder in (("base", base), ("tuned", tuned)):
            pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
            pipe.set_progress_bar_config(disable=True)
            images = pipe(minisd_eval.prompts_for(word), num_inference_steps=50, guidance_scale=1.0,
                          generator=torch.Generator().manual_seed(0), output_type="pt").images
            stock[name] = minisd_eval.background_brightness(images * 2 - 1).mean().item()
        assert abs(stock["tuned"] - own) < abs(stock["base"] - own), (word, stock)


# the README's fine-tune (docs/latent.md)
FINE_TUNE_FLAGS = ["--resolution", "32", "--batch-size", "32", "--lr", "3e-4", "--max-steps", "1000",
                   "--ema-decay", "0.99", "--workers", "0", "--threads", "1"]
