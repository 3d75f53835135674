"""The Stable Diffusion latent path on tiny random SD-shaped components (no download).

A module fixture builds a UNet2DConditionModel, an AutoencoderKL and a CLIP text model with a
few thousand parameters each, plus a CLIP tokenizer from a vocabulary the test writes, and saves
them in the diffusers layout with Stable Diffusion's own (eps, non-zero-SNR) scheduler config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,  # noqa: E402
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from minidiff.latent import stable_diffusion as latent, data as latent_data, train as latent_train  # noqa: E402
from minidiff.training import runtime  # noqa: E402
from minidiff.objectives import diffusion_loss  # noqa: E402
from minidiff.samplers import make_timesteps  # noqa: E402
from scripts import load_script  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RES = 32  # pixels; the tiny VAE has two blocks, so latents are 16 x 16
CAPTIONS = ["a black square", "a white square", "a red square", "a blue square"]
COLOURS = [(0, 0, 0), (255, 255, 255), (220, 30, 30), (30, 30, 220)]


def write_tokenizer(folder):
    """A character-level CLIP BPE vocabulary (no merges): enough to tokenize any lowercase text."""
    folder.mkdir(parents=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in letters:
            vocab[ch + suffix] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=12)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny networks are a few hundred small ops per call: on a busy machine, threads only
    wait for each other (a forward pass measured 0.1 s on one thread, up to 6 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A complete tiny Stable Diffusion checkpoint folder, as StableDiffusionPipeline saves it."""
    root = tmp_path_factory.mktemp("tiny_sd")
    torch.manual_seed(0)
    tokenizer = write_tokenizer(root / "tokenizer_src")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=RES)
    unet = UNet2DConditionModel(sample_size=RES // 2, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8)
    # Stable Diffusion 2.1-base's scheduler: eps prediction, scaled_linear, non-zero terminal SNR
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    folder = root / "sd"
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                            scheduler=scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four solid-colour images with a caption .txt beside each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    for i, (colour, caption) in enumerate(zip(COLOURS, CAPTIONS)):
        Image.new("RGB", (RES + 8, RES), colour).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(caption)
    return root


def train_latent_cli():
    """The top-level train_latent.py as a module (it is a script, not part of the package)."""
    return load_script("train_latent.py")


def config(tiny_sd, images, out, **kw):
    base = dict(pretrained=str(tiny_sd), data_dir=str(images), output_dir=str(out), resolution=RES,
                max_steps=4, batch_size=2, lr=1e-3, ema_decay=0.9, caption_dropout=0.25, workers=0,
                device="cpu", checkpoint_every=2, progress=False)
    return latent_train.LatentTrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------- loading


def test_the_loaded_schedule_is_stable_diffusions_rescaled_to_zero_terminal_snr(tiny_sd):
    """Table 1, Stable Diffusion row: sqrt(alpha_bar_T) = 0.068265 before the rescale, 0 after."""
    config = latent.read_scheduler_config(tiny_sd)
    flawed, fixed = latent.base_schedule(config, zero_snr=False), latent.base_schedule(config, zero_snr=True)
    assert flawed.alphas_cumprod[-1].sqrt().item() == pytest.approx(0.068265, abs=5e-7)
    assert fixed.zero_terminal_snr and fixed.alphas_cumprod[0] == flawed.alphas_cumprod[0]
    assert latent.prediction_of(config) == "eps"


def test_incomplete_checkpoint_folder_names_what_is_missing(tiny_sd, tmp_path):
    import shutil

    with pytest.raises(FileNotFoundError, match="does not exist"):
        latent.check_checkpoint_folder(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd, broken)
    for f in (broken / "vae").glob("*.safetensors"):
        f.unlink()
    for name in ("vocab.json", "tokenizer.json"):
        (broken / "tokenizer" / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=r"vae/ weights.*tokenizer/vocab.json"):
        latent.check_checkpoint_folder(broken)


def test_resolution_must_be_a_multiple_of_the_vae_factor(tiny_sd, images, tmp_path):
    with pytest.raises(ValueError, match="not a multiple of the VAE's downsampling factor 2"):
        latent_train.train(config(tiny_sd, images, tmp_path, resolution=RES + 1))
    with pytest.raises(ValueError, match="downsampling factor 8.*use e.g. 504 or 512"):
        latent.check_resolution(510, 8)


def test_images_without_captions_are_refused(images, tmp_path):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(images, folder)
    (folder / "2.txt").unlink()
    with pytest.raises(ValueError, match=r"1 of 4 images .* no caption \(2.png\)"):
        latent_data.CaptionedImages(folder, RES)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "2.png", "text": "a red square"}) + "\n")
    assert latent_data.CaptionedImages(folder, RES).captions == CAPTIONS


# --------------------------------------------------------------------------------- training


def test_each_epoch_visits_every_image_once_split_across_ranks():
    """10 images, batch 2 per rank, 2 ranks: 2 global batches per epoch (the ragged 2 images
    are dropped), the ranks' batches are disjoint, and a later start gives the same batches."""
    ranks = [runtime.StepOrder(10, 2, seed=5, rank=r, world_size=2) for r in range(2)]
    for epoch in range(3):
        seen = [i for k in (2 * epoch, 2 * epoch + 1) for b in ranks for i in b.indices(k).tolist()]
        assert len(seen) == len(set(seen)) == 8
    late = latent_train.MicroBatches(runtime.StepOrder(10, 2, seed=5, rank=1, world_size=2), start=3)
    assert next(iter(late)) == runtime.StepOrder(10, 2, seed=5, rank=1, world_size=2).indices(3).tolist()




def fixed_batch_loss(components, unet, schedule, images):
    """The v loss of one fixed batch at fixed timesteps and noise."""
    data = latent_data.CaptionedImages(images, RES)
    pixels = torch.stack([data[i]["pixels"] for i in range(len(data))])
    z = latent.encode_images(components, pixels, "mean")
    c = latent.encode_prompts(components, data.captions)
    t = torch.tensor([999, 700, 300, 20])
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return diffusion_loss(latent.LatentUNet(unet), z, schedule, "v", y=c, t=t, noise=noise).item()


def test_training_lowers_the_v_loss_on_a_fixed_batch(tiny_sd, images, tmp_path):
    components = latent.load_components(tiny_sd)
    schedule = latent.base_schedule(components.scheduler_config, zero_snr=True)
    before = fixed_batch_loss(components, components.unet, schedule, images)
    result = latent_train.train(config(tiny_sd, images, tmp_path, max_steps=30, ema_decay=0, caption_dropout=0,
                                 vae_latent="mean", checkpoint_every=1000))
    after = fixed_batch_loss(components, result.unet, schedule, images)
    print(f'v loss on the fixed batch: {before:.4f} before, {after:.4f} after 30 steps')
    assert after < 0.6 * before, (before, after)


def test_resume_is_exact(tiny_sd, images, tmp_path):
    """4 steps in one go == 2 steps, stop, resume for 2 more: same weights, EMA and optimizer, bit for bit."""
    straight = latent_train.train(config(tiny_sd, images, tmp_path / "a", max_steps=4))
    latent_train.train(config(tiny_sd, images, tmp_path / "b", max_steps=2))
    resumed = latent_train.train(config(tiny_sd, images, tmp_path / "b", max_steps=4, resume=True))
    assert resumed.losses == straight.losses
    for (name, p), q in zip(straight.unet.state_dict().items(), resumed.unet.state_dict().values()):
        assert torch.equal(p, q), name
    a, b = (latent_train.load_checkpoint(d / "checkpoint.pt") for d in (tmp_path / "a", tmp_path / "b"))
    assert a["step"] == b["step"] == 4
    for key in a["optimizer"]["state"]:
        assert torch.equal(a["optimizer"]["state"][key]["exp_avg_sq"], b["optimizer"]["state"][key]["exp_avg_sq"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    with pytest.raises(ValueError, match="would change what is trained.*lr: 0.0001 now, 0.001 in the checkpoint"):
        latent_train.train(config(tiny_sd, images, tmp_path / "b", max_steps=5, lr=1e-4, resume=True))


def test_cached_latents_give_the_same_losses_as_live_encoding(tiny_sd, images, tmp_path):
    kw = dict(max_steps=3, vae_latent="mean", ema_decay=0)
    live = latent_train.train(config(tiny_sd, images, tmp_path / "live", **kw))
    cached = latent_train.train(config(tiny_sd, images, tmp_path / "cached", cache_dir=str(tmp_path / "cache"), **kw))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4 + 1  # one per image, plus the empty caption
    assert cached.losses == pytest.approx(live.losses, rel=1e-5)


# --------------------------------------------------------------------------------- sampling


def test_sampling_with_guidance_and_rescale_is_finite_and_seed_reproducible(tiny_sd):
    components = latent.load_components(tiny_sd)
    kw = dict(negative_prompt="blurry", height=RES, width=RES + 8, steps=3, guidance=7.5,
              guidance_rescale=0.7, progress=False)
    a = latent.generate(components, ["a black square", "a white square"], seed=3, **kw)
    b = latent.generate(components, ["a black square", "a white square"], seed=3, **kw)
    c = latent.generate(components, ["a black square", "a white square"], seed=4, **kw)
    assert a.shape == (2, 3, RES, RES + 8) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_latent_command_writes_pngs(tiny_sd, tmp_path):
    from PIL import Image

    from minidiff.latent import sample as sample_latent

    paths = sample_latent.main(["--model", str(tiny_sd), "--prompt", "a cat", "--prompt", "a dog",
                                "--steps", "2", "--height", str(RES), "--width", str(RES), "--sampler", "ddpm",
                                "--guidance-rescale", "0.7",
                                "--device", "cpu", "--out", str(tmp_path), "--no-progress"])
    assert len(paths) == 2 and Image.open(paths[0]).size == (RES, RES)


# ------------------------------------------------------------------------------------ export


def test_exported_folder_loads_in_a_stock_pipeline_and_matches_minidiff(tiny_sd, images, tmp_path):
    """The saved scheduler records the fixes; diffusers' own DDIM loop on the saved folder gives
    the same images as minidiff's sampler (same x_T, trailing, guidance 5, phi 0.7)."""
    out = tmp_path / "out"
    cfg = train_latent_cli().parse_args(["--pretrained", str(tiny_sd), "--data-dir", str(images), "--output-dir", str(out),
                                   "--resolution", str(RES), "--max-steps", "2", "--batch-size", "2",
                                   "--sample-every", "2", "--sample-steps", "2", "--workers", "0",
                                   "--device", "cpu", "--no-progress"])
    latent_train.train(cfg)
    assert (out / "samples" / "step_0000002.png").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    sched = pipe.scheduler
    assert isinstance(sched, DDIMScheduler) and sched.config.rescale_betas_zero_snr
    assert sched.config.prediction_type == "v_prediction" and sched.config.timestep_spacing == "trailing"
    sched.set_timesteps(10)
    assert torch.equal(sched.timesteps, make_timesteps(1000, 10, "trailing"))
    ours = latent.base_schedule(latent.read_scheduler_config(out), zero_snr=True).alphas_cumprod
    assert torch.allclose(sched.alphas_cumprod.double(), ours, atol=1e-6) and sched.alphas_cumprod[-1] == 0

    x_T = torch.randn(1, 4, RES // 2, RES // 2, generator=torch.Generator().manual_seed(0))
    theirs = pipe("a red square", height=RES, width=RES, num_inference_steps=4, guidance_scale=5.0,
                  guidance_rescale=0.7, latents=x_T.clone(), output_type="pt").images
    components = latent.load_components(out)
    mine = latent.generate(components, ["a red square"], height=RES, width=RES, steps=4, guidance=5.0,
                           guidance_rescale=0.7, x_T=x_T, progress=False)
    assert torch.allclose((mine + 1) / 2, theirs, atol=1e-4)


# ------------------------------------------------------------------------ memory switches


def test_gradient_checkpointing_gives_the_same_gradients(tiny_sd):
    """Recomputing activations in backward changes memory, not maths: identical gradients."""
    components = latent.load_components(tiny_sd)
    schedule = latent.base_schedule(components.scheduler_config, zero_snr=True)
    z = torch.randn(2, 4, RES // 2, RES // 2, generator=torch.Generator().manual_seed(0))
    c = latent.encode_prompts(components, ["a cat", "a dog"])
    grads = []
    for checkpointing in (False, True):
        unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        loss = diffusion_loss(latent.LatentUNet(unet), z, schedule, "v", y=c,
                              generator=torch.Generator().manual_seed(1))
        loss.backward()
        grads.append([p.grad for p in unet.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(*grads))


def test_bf16_training_with_checkpointing_and_accumulation_runs(tiny_sd, images, tmp_path):
    result = latent_train.train(config(tiny_sd, images, tmp_path, max_steps=2, batch_size=1, grad_accum=2,
                                 bf16=True, gradient_checkpointing=True))
    assert result.step == 2 and all(0 < loss < 10 for loss in result.losses)
    assert all(p.dtype == torch.float32 for p in result.unet.parameters())  # master weights stay fp32


@pytest.mark.slow
def test_torchrun_two_processes_train_and_resume(tiny_sd, images, tmp_path):
    """DDP on CPU (gloo): two processes, one image each per micro-batch; rank 0 writes one
    checkpoint holding both ranks' noise generators, and a resumed run continues it."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "train_latent.py"),
           "--pretrained", str(tiny_sd), "--data-dir", str(images), "--output-dir", str(out),
           "--resolution", str(RES), "--batch-size", "1", "--workers", "0", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra in (["--max-steps", "2"], ["--max-steps", "3", "--resume"]):
        subprocess.run(cmd + extra, check=True, env=env, timeout=300)
    state = latent_train.load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 3 and len(state["losses"]) == 3 and len(state["rng_ranks"]) == 2
    assert not torch.equal(*(r["noise"] for r in state["rng_ranks"]))  # each rank draws its own noise
    assert StableDiffusionPipeline.from_pretrained(out, safety_checker=None).scheduler.config.rescale_betas_zero_snr


# ------------------------------------------------------------- what the fine-tune must survive


def test_default_fine_tune_exports_a_model_that_has_moved(tiny_sd, images, tmp_path):
    """With --ema-decay 0.9999 and no warm-up a 200-step run exported weights that had moved 1.35%
    as far from the base as the live ones. With the defaults (EMA 0.999, warmed up) the exported
    UNet moves at least half as far as the live one; the run writes metrics.jsonl and loss.png."""
    defaults = latent_train.LatentTrainConfig(pretrained="", data_dir="")
    out = tmp_path / "run"
    result = latent_train.train(config(tiny_sd, images, out, max_steps=6, ema_decay=defaults.ema_decay,
                                       log_every=2))
    base = latent.load_components(tiny_sd).unet.state_dict()
    state = latent_train.load_checkpoint(out / "checkpoint.pt")

    def distance(weights):
        return sum((weights[k].float() - base[k].float()).pow(2).sum() for k in base).sqrt().item()

    exported = latent.load_components(out).unet.state_dict()
    assert distance(exported) >= 0.5 * distance(state["unet"]) > 0
    assert all(torch.equal(exported[k], result.unet.state_dict()[k]) for k in exported)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6] and all(0 < r["loss"] < 10 for r in rows)
    assert rows[-1]["loss"] == pytest.approx(sum(result.losses[-2:]) / 2)
    assert (out / "loss.png").stat().st_size > 0


def test_export_without_a_scheduler_folder_records_the_betas_trained(tiny_sd, images, tmp_path):
    """A base without scheduler/scheduler_config.json trains on scaled-linear 0.00085..0.012; the
    export used to fall back to diffusers' linear 1e-4..0.02 (alpha_bar(500) 0.075, not 0.241)."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_sd, base)
    shutil.rmtree(base / "scheduler")
    out = tmp_path / "out"
    latent_train.train(config(base, images, out, max_steps=1))
    trained = latent.base_schedule({}, zero_snr=True).alphas_cumprod
    exported = DDIMScheduler.from_pretrained(out / "scheduler").alphas_cumprod.double()
    assert torch.allclose(exported, trained, atol=1e-6)
    assert trained[500].item() == pytest.approx(0.241, abs=1e-3)


@pytest.mark.parametrize("flags, message", [
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--lr", "0"], "--lr must be a positive rate"),
    (["--ema-decay", "1"], "--ema-decay must lie in [0, 1)"),
    (["--caption-dropout", "-0.1"], "--caption-dropout must lie in"),
    (["--grad-accum", "0"], "--grad-accum must be at least 1"),
    (["--resume"], "nothing to resume"),
    (["--prediction", "eps"], "cannot be trained on a zero-terminal-SNR schedule"),
])
def test_latent_trainer_refuses_bad_flags_in_one_line_before_loading(tiny_sd, images, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    argv = ["--pretrained", str(tiny_sd), "--data-dir", str(images), "--output-dir", str(out),
            "--resolution", str(RES), "--workers", "0", "--device", "cpu", "--no-progress", *flags]
    with pytest.raises(SystemExit) as exit_info:
        train_latent_cli().main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_latent_trainer_skips_unreadable_images_and_refuses_a_pixel_checkpoint(tiny_sd, images, tmp_path, capsys):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(images, folder)
    (folder / "broken.png").write_text("not an image")
    (folder / "broken.txt").write_text("a broken square")
    data = latent_data.CaptionedImages(folder, RES)
    assert len(data) == 4 and "skipped 1 of 5 files" in capsys.readouterr().out
    out = tmp_path / "out"
    out.mkdir()
    runtime.save_checkpoint(out / "checkpoint.pt", {"kind": "pixel", "step": 3})
    with pytest.raises(runtime.UsageError, match="written by pixel training, not latent training"):
        latent_train.train(config(tiny_sd, images, out, resume=True))


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be from 1 to 1000"),
    (["--guidance-rescale", "2"], "--guidance-rescale must lie in [0, 1]"),
    (["--num-images", "0"], "--num-images must be at least 1"),
])
def test_sample_latent_refuses_bad_flags_before_loading(tiny_sd, tmp_path, capsys, flags, message):
    from minidiff.latent import sample as sample_latent

    with pytest.raises(SystemExit) as exit_info:
        sample_latent.main(["--model", str(tiny_sd), "--prompt", "a cat", "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
