"""Bad input on every command line ends in one line `error: ...`, exit status 2, no traceback and
nothing written: flags that contradict each other, folders that are files, the same path given
twice, a checkpoint of the wrong kind. The commands run as functions (main(argv)); two run as real
processes, to show what a user sees."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minidiff.evaluation import fid, metrics
from minidiff.training import sample, train
from minidiff.repro import __main__ as repro

ROOT = Path(__file__).resolve().parents[1]


def refused(main, argv, capsys, *words) -> str:
    """Run main(argv); assert exit 2 with one line on stderr that holds every one of `words`."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err, err
    assert all(w in err for w in words), err
    return err


def script(path: str):
    spec = importlib.util.spec_from_file_location(f"bad_input_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def latent_checkpoint(tmp_path):
    """A checkpoint.pt written by the latent trainer (the wrong kind for the pixel commands)."""
    path = tmp_path / "latent" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save({"kind": "latent", "unet": {}, "step": 3}, path)
    return path


# ---------------------------------------------------------------------------- train_cifar.py


def test_eps_with_zero_snr_is_a_flag_error_as_a_real_command(tmp_path):
    """The issue's case, as a user runs it: before any start-up work, one line, exit 2."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "train_cifar.py", "--prediction", "eps", "--zero-snr", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "--prediction eps" in done.stderr and "--no-zero-snr" in done.stderr
    assert not out.exists() and done.stdout == ""


@pytest.mark.parametrize("flags, words", [
    (["--prediction", "eps"], ["--prediction eps", "--zero-snr"]),
    (["--weighting", "min_snr"], ["--weighting min_snr", "--no-zero-snr"]),
    (["--prediction", "u"], ["--prediction u", "--schedule flow"]),
    (["--schedule", "flow", "--no-zero-snr"], ["--schedule flow", "--no-zero-snr"]),
])
def test_train_refuses_what_zero_snr_cannot_train(tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    refused(train.main, [*flags, "--out", out], capsys, *words)
    assert not out.exists()


def test_train_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    refused(train.main, ["--out", tmp_path / "f" / "run"], capsys, "--out", "is a file")


def test_train_out_inside_the_image_folder(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 16)).save(images / "a.png")
    refused(train.main, ["--dataset", "folder", "--data-root", images, "--out", images / "run"], capsys,
            "--out", "inside --data-root")
    assert not (images / "run").exists()


def test_train_resume_from_a_latent_checkpoint(latent_checkpoint, capsys):
    refused(train.main, ["--out", latent_checkpoint.parent, "--resume"], capsys, "latent training")


def test_train_on_an_mps_device_this_machine_lacks(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    refused(train.main, ["--device", "mps", "--out", tmp_path / "run"], capsys, "--device mps", "MPS")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- minidiff.training.sample


def test_sample_a_latent_checkpoint(latent_checkpoint, capsys):
    refused(sample.main, [latent_checkpoint, "--png", ""], capsys, "latent training", "not pixel")


@pytest.mark.parametrize("outputs, words", [
    (["--png", "{ckpt}"], ["--png", "checkpoint itself"]),
    (["--npz", "{ckpt}"], ["--npz", "checkpoint itself"]),
    (["--png", "{dir}/s.png", "--npz", "{dir}/s.png"], ["--png and --npz both name"]),
    (["--png", "{dir}"], ["--png", "is a folder"]),
])
def test_sample_outputs_that_collide(latent_checkpoint, capsys, outputs, words):
    argv = [a.format(ckpt=latent_checkpoint, dir=latent_checkpoint.parent) for a in outputs]
    before = latent_checkpoint.read_bytes()
    refused(sample.main, [latent_checkpoint, *argv], capsys, *words)
    assert latent_checkpoint.read_bytes() == before


# ----------------------------------------------------------------------------- minidiff.evaluation.fid


@pytest.fixture
def npz(tmp_path):
    import numpy as np

    path = tmp_path / "s.npz"
    np.savez(path, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.zeros(4, np.int64))
    return path


def test_fid_without_samples(tmp_path, capsys):
    refused(fid.main, [tmp_path / "none.npz", "--device", "cpu"], capsys, "no sample file")


def test_fid_stats_that_would_overwrite_the_samples(npz, capsys):
    before = npz.read_bytes()
    refused(fid.main, [npz, "--stats", npz, "--num", 4, "--device", "cpu"], capsys, "--stats", "sample file itself")
    assert npz.read_bytes() == before


def test_fid_stats_that_is_a_folder(npz, capsys):
    refused(fid.main, [npz, "--stats", npz.parent, "--num", 4, "--device", "cpu"], capsys, "--stats", "is a folder")


def test_fid_more_images_than_the_file_holds(npz, capsys):
    refused(fid.main, [npz, "--num", 10, "--device", "cpu"], capsys, "holds 4 images")


# ------------------------------------------------------------------------- minidiff.evaluation.metrics


def test_metrics_figure_that_would_overwrite_the_samples(npz, capsys):
    before = npz.read_bytes()
    refused(metrics.main, [npz, "--figure", npz], capsys, "--figure", "sample file itself")
    assert npz.read_bytes() == before


def test_metrics_cache_dir_that_is_a_file(npz, capsys):
    refused(metrics.main, [npz, "--cache-dir", npz], capsys, "--cache-dir", "is a file")


def test_metrics_counts_below_one(npz, capsys):
    refused(metrics.main, [npz, "--num-images", 0], capsys, "--num-images must be at least 1")


# --------------------------------------------------------------------------- minidiff.repro


def test_repro_same_folder_twice_is_written_once(tmp_path, capsys):
    """highdim-table --out D --figures-dir D (the issue's case) writes its figure once, no copy."""
    repro.main(["highdim-table", "--out", str(tmp_path), "--figures-dir", str(tmp_path), "--dims", "1e2",
                "--cw-dims", "", "--max-steps", "200", "--no-progress"])
    assert (tmp_path / "highdim_table.png").stat().st_size > 0 and "copied" not in capsys.readouterr().out


@pytest.mark.parametrize("name, flag", [("table1", "--out"), ("table2", "--figures-dir"),
                                        ("highdim-features", "--figures-dir"), ("brightness", "--models")])
def test_repro_folder_flag_that_is_a_file(tmp_path, capsys, name, flag):
    (tmp_path / "f").write_text("x")
    argv = [name, flag, tmp_path / "f"] + ([] if flag == "--out" else ["--out", tmp_path / "out"])
    refused(repro.main, argv, capsys, flag, "is a file")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- the latent commands


def test_train_latent_output_inside_data_or_base(tmp_path, capsys):
    pytest.importorskip("diffusers")
    train_latent = script("train_latent.py")
    data, base = tmp_path / "data", tmp_path / "base"
    data.mkdir(), base.mkdir()
    refused(train_latent.main, ["--pretrained", base, "--data-dir", data, "--output-dir", data / "out"], capsys,
            "--output-dir", "--data-dir")
    refused(train_latent.main, ["--pretrained", base, "--data-dir", data, "--output-dir", base], capsys,
            "--output-dir", "--pretrained")
    assert not (data / "out").exists()


def test_train_latent_from_a_pixel_checkpoint_file(tmp_path, latent_checkpoint, capsys):
    pytest.importorskip("diffusers")
    refused(script("train_latent.py").main, ["--pretrained", latent_checkpoint, "--data-dir", tmp_path,
                                             "--output-dir", tmp_path / "out"], capsys, "--pretrained", "is a file")


def test_sample_latent_given_a_pixel_checkpoint_or_run(latent_checkpoint, tmp_path, capsys):
    from minidiff.latent import sample as sample_latent

    refused(sample_latent.main, ["--model", latent_checkpoint, "--prompt", "x", "--out", tmp_path / "o"], capsys,
            "--model", "is a file", "minidiff sample")
    refused(sample_latent.main, ["--model", latent_checkpoint.parent, "--prompt", "x", "--out", tmp_path / "o"],
            capsys, "not a diffusers folder")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ benchmarks/


def test_quality_contradicting_jobs_and_a_file_for_a_folder(tmp_path, capsys):
    quality = script("benchmarks/quality.py")
    (tmp_path / "f").write_text("x")
    refused(quality.main, ["--make-folder", tmp_path / "d", "--table", tmp_path / "f"], capsys, "two separate jobs")
    refused(quality.main, ["--name", "a", "--out", tmp_path / "f"], capsys, "--out", "is a file")
    refused(quality.main, ["--table", tmp_path / "none.jsonl"], capsys, "--table", "no such file")
    assert not (tmp_path / "d").exists()


def test_gpu_check_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    refused(script("benchmarks/gpu_check.py").main, ["--smoke", "--out", tmp_path / "f"], capsys, "--out", "is a file")
