"""Fine-tune Stable Diffusion in latent space with Lin et al.'s fixes (zero terminal SNR, v prediction).

    python train_latent.py --pretrained stabilityai/stable-diffusion-2-1-base --data-dir my_images \
        --output-dir out/latent --bf16 --gradient-checkpointing --grad-accum 8 --cache-dir cache/latent

Several GPUs: `torchrun --nproc_per_node 4 train_latent.py ...` (same flags). The result in
--output-dir is a diffusers folder (UNet with EMA weights, a DDIMScheduler config with
rescale_betas_zero_snr, v_prediction and trailing spacing) that loads in a stock
StableDiffusionPipeline and in `minidiff sample-latent --model OUTPUT_DIR`.
The loop and its flags are in minidiff/latent/train.py; this file only runs them (= `minidiff train-latent`).
"""

from minidiff.latent.train import main, parse_args  # noqa: F401 (needs: pip install -e ".[latent]")

if __name__ == "__main__":
    main()
