"""Stable Diffusion in latent space with Lin et al.'s fixes: `train_latent.py` (`minidiff
train-latent`), `minidiff sample-latent`, and a miniature Stable Diffusion built on the CPU
(`minidiff minisd`). Needs the `latent` extra (diffusers, transformers)."""
