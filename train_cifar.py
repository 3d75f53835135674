"""Train a pixel-space diffusion model: CIFAR-10, a folder of images, or the built-in shapes.

    python train_cifar.py                                  # built-in shapes, small-patch2 UNet, 10 minutes
    python train_cifar.py --dataset cifar10                # DDPM's CIFAR-10 recipe on one GPU
    torchrun --nproc_per_node 4 train_cifar.py --dataset cifar10 --bf16 --compile

All flags: python train_cifar.py --help (= minidiff train --help). The loop is minidiff/training/train.py,
its flags minidiff/training/config.py, the recipes minidiff/training/recipes.py, the main job's loss minidiff/training/loss.py.
"""

from minidiff.training.train import main

if __name__ == "__main__":
    main()
