"""Fine-tune Stable Diffusion in latent space with Lin et al.'s fixes (zero terminal SNR, v prediction).

    python train_latent.py --pretrained stabilityai/stable-diffusion-2-1-base --data-dir my_images \
        --output-dir out/latent --bf16 --gradient-checkpointing --grad-accum 8 --cache-dir cache/latent

Several GPUs: `torchrun --nproc_per_node 4 train_latent.py ...` (same flags). The result in
--output-dir is a diffusers folder (UNet with EMA weights, a DDIMScheduler config with
rescale_betas_zero_snr, v_prediction and trailing spacing) that loads in a stock
StableDiffusionPipeline and in `minidiff sample-latent --model OUTPUT_DIR`.
The loop itself is minidiff.latent.train.train; this file is only its command line.
"""

from __future__ import annotations

import argparse

from minidiff.training import runtime
from minidiff.training.cli import add_common_flags
from minidiff.latent.train import LatentTrainConfig, train  # needs: pip install -e ".[latent]"


def parse_args(argv=None) -> LatentTrainConfig:
    d = LatentTrainConfig(pretrained="", data_dir="")  # the defaults
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--pretrained", required=True, help="base model: diffusers folder, or hub id with internet")
    a("--data-dir", required=True, help="images with captions (.txt beside each image, or metadata.jsonl)")
    a("--output-dir", default=d.output_dir, help="diffusers folder written here, plus checkpoint.pt and samples/")
    a("--resolution", type=int, default=d.resolution, help="square training size in pixels")
    # the fixes (trailing spacing and guidance rescale are sampling-time choices)
    a("--no-zero-snr", dest="zero_snr", action="store_false", help="keep the base's non-zero terminal SNR")
    a("--prediction", choices=("v", "eps", "x0"), default=d.prediction, help="training target (paper: v)")
    # optimisation
    a("--max-steps", type=int, default=d.max_steps, help="optimizer steps")
    a("--batch-size", type=int, default=d.batch_size, help="images per process per micro-batch")
    a("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    a("--lr", type=float, default=d.lr)
    a("--warmup-steps", type=int, default=d.warmup_steps, help="linear learning-rate warm-up")
    a("--weight-decay", type=float, default=d.weight_decay)
    a("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0: off)")
    a("--ema-decay", type=float, default=d.ema_decay, help="0 turns EMA off")
    a("--caption-dropout", type=float, default=d.caption_dropout, help="probability of the empty caption")
    a("--vae-latent", choices=("sample", "mean"), default=d.vae_latent, help="draw from q(z|x) or take its mean")
    # memory and speed
    a("--bf16", action="store_true", help="bf16 autocast; frozen VAE and text encoder held in bf16")
    a("--gradient-checkpointing", action="store_true", help="recompute UNet activations in backward")
    a("--cache-dir", default=None, help="cache latents and text embeddings here (skips both encoders)")
    a("--workers", type=int, default=d.workers, help="data loader processes")
    a("--threads", type=int, default=d.threads, help="torch CPU threads (1 is fastest on a CPU busy with other jobs)")
    # bookkeeping
    add_common_flags(p)  # --seed, --device (torchrun: one GPU per process)
    a("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoint.pt writes")
    a("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    a("--sample-every", type=int, default=d.sample_every, help="steps between sample images (0: never)")
    a("--sample-prompts", nargs="+", default=d.sample_prompts)
    a("--sample-steps", type=int, default=d.sample_steps)
    a("--guidance", type=float, default=d.guidance, help="guidance weight of the sample images")
    a("--guidance-rescale", type=float, default=d.guidance_rescale, help="phi of the sample images")
    a("--log-every", type=int, default=d.log_every, help="steps between loss read-outs")
    a("--no-progress", dest="progress", action="store_false")
    return LatentTrainConfig(**vars(p.parse_args(argv)))


def main(argv=None) -> None:
    result = runtime.run_command(train, parse_args(argv))
    if result.unet is not None:
        print(f"step {result.step}: fine-tuned model written to {result.output_dir}")


if __name__ == "__main__":
    main()
