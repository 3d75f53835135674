"""Train a pixel-space diffusion model: CIFAR-10, a folder of images, or the built-in shapes.

    python train_cifar.py                                  # built-in shapes, small UNet, CPU, 10 minutes
    python train_cifar.py --dataset cifar10                # DDPM's CIFAR-10 recipe on one GPU
    torchrun --nproc_per_node 4 train_cifar.py --dataset cifar10 --bf16 --compile

All flags: python train_cifar.py --help (= minidiff train --help). The loop is minidiff/training/train.py,
its flags and recipes minidiff/training/config.py, the main job's loss minidiff/training/recipe.py.
"""

from minidiff.training.train import main

if __name__ == "__main__":
    main()
