"""`minidiff JOB [options]`: the one command, the same as `python -m minidiff`.

`minidiff --help` lists the jobs; `minidiff JOB --help` shows a job's own flags. Only the chosen
job's module is imported, so the list is quick and needs none of the optional extras.
"""

import importlib
import sys

# job -> (module:function taking argv, one line for --help); --help keeps this order
JOBS = {
    "train": ("minidiff.training.train:main",
              "train a pixel-space model: built-in shapes, CIFAR-10 or a folder (= python train_cifar.py)"),
    "sample": ("minidiff.training.sample:main",
               "draw images from a checkpoint with the settings of its report: minidiff sample CKPT"),
    "metrics": ("minidiff.evaluation.metrics:main",
                "sample quality on a CPU, judged by a small classifier trained on the real images"),
    "fid": ("minidiff.evaluation.fid:main",
            "Frechet Inception Distance of generated images (needs the fid extra)"),
    "brightness-gain": ("minidiff.evaluation.brightness_gain:main",
                        "how well a trained network reads an image's brightness from the noise"),
    "explore": ("minidiff.explore:main",
                "one self-contained web page: a checkpoint's forward and reverse process under sliders"),
    "repro": ("minidiff.repro.__main__:main",
              "one reproduction experiment of either paper: minidiff repro NAME (--help lists them)"),
    "course": ("minidiff.course.__main__:main",
               "the course's exercises: list them, start one, check and run your answer"),
    "minisd": ("minidiff.latent.minisd:main",
               "Stable Diffusion in miniature, built on a CPU: minidiff minisd build (latent extra)"),
    "train-latent": ("minidiff.latent.train:main",
                     "fine-tune Stable Diffusion with Lin et al.'s fixes (= python train_latent.py; latent extra)"),
    "sample-latent": ("minidiff.latent.sample:main",
                      "sample a Stable Diffusion folder with minidiff's sampler and guidance (latent extra)"),
}


def usage() -> str:
    width = max(map(len, JOBS))
    lines = ["usage: minidiff JOB [options]   (minidiff JOB --help: the job's own flags)", "",
             "jobs:"]
    lines += [f"  {name:{width}s}  {about}" for name, (_, about) in JOBS.items()]
    return "\n".join(lines)


def job_function(name: str):
    """The main(argv) of job `name`, importing its module (and only its module) now."""
    target = JOBS[name][0]
    module, function = target.split(":")
    main_ = getattr(importlib.import_module(module), function, None)
    if main_ is None:  # a packaging mistake, not a user's: still one line
        print(f"error: minidiff {name}: {target} does not exist", file=sys.stderr)
        raise SystemExit(2)
    return main_


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in JOBS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(JOBS)} "
              "(minidiff --help describes them)", file=sys.stderr)
        return 2
    result = job_function(name)(rest)
    # a job's main returns an exit status (course) or what it made (a report, a list of files)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
