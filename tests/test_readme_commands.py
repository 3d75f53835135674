"""Every command README.md shows still runs: each line of its ```bash blocks is run as written with
--help added (its help must name every flag the line uses), `minidiff course list` is run as it is,
and the Python example runs. `pip install` and `python -m pytest` lines are left out; the main job
itself, on a budget of two steps, is marked slow.

The lines run in one Python process, each through the entry point a shell would reach
(`minidiff` -> minidiff.__main__.main, `python train_cifar.py` -> the script as __main__), so torch
is imported once; the console script itself is run once, on its own."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BASH_BLOCK = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.M | re.S)
SKIP = re.compile(r"^(?:pip3? install|python3? -m pip install|python3? -m pytest)\b")
RUN_AS_IS = {("minidiff", "course", "list")}  # their --help says less than running them, which is quick
NEEDS_LATENT = ("minisd", "sample-latent", "train-latent", "train_latent.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def readme_commands() -> list[tuple[int, str]]:
    """(line in README.md, command) for each command of a ```bash block, && chains split."""
    text = README.read_text(encoding="utf-8")
    found = []
    for block in BASH_BLOCK.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        for offset, line in enumerate(block.group(1).splitlines()):
            for part in line.split("&&"):
                part = part.split(" #")[0].strip()
                if part and not SKIP.match(part):
                    found.append((first + offset, part))
    return found


def argv_of(command: str) -> list[str]:
    tokens = shlex.split(command)
    if tokens[0] == "minidiff" or tokens[0].endswith(".py"):
        return tokens
    if tokens[0] in ("python", "python3") and len(tokens) > 1 and tokens[1].endswith(".py"):
        return tokens[1:]
    raise AssertionError(f"README shows a command this test cannot run: {command!r} (teach argv_of)")


# Runs each argv as a shell would reach it and prints, per command, its exit status and output.
DRIVER = r"""
import contextlib, io, json, runpy, sys
out = []
for argv in json.loads(sys.argv[1]):
    buffer = io.StringIO()
    status = 0
    sys.argv = list(argv)
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            if argv[0] == "minidiff":
                from minidiff.__main__ import main
                status = main(argv[1:])
            else:
                runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except ImportError as err:
            status = "missing " + str(err.name)
        except Exception as err:
            status = f"{type(err).__name__}: {err}"
    out.append({"status": status, "output": buffer.getvalue()})
print("\n@@RESULTS@@" + json.dumps(out))
"""


def latent_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("diffusers", "transformers"))


@pytest.fixture(scope="module")
def results() -> dict:
    commands = readme_commands()
    runs = []
    for _, command in commands:
        argv = argv_of(command)
        runs.append(argv if tuple(argv) in RUN_AS_IS else argv + ["--help"])
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(runs)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert "@@RESULTS@@" in done.stdout, done.stderr[-3000:]
    answers = json.loads(done.stdout.split("@@RESULTS@@")[-1])
    return {command: answer for (_, command), answer in zip(commands, answers)}


def test_the_readme_shows_its_commands():
    commands = [c for _, c in readme_commands()]
    assert "python train_cifar.py" in commands and len(commands) >= 10, commands


@pytest.mark.parametrize("line,command", readme_commands(), ids=[f"README.md:{n}" for n, _ in readme_commands()])
def test_readme_command_runs(line, command, results):
    if any(word in command for word in NEEDS_LATENT) and not latent_installed():
        pytest.skip("needs the latent extra")
    answer = results[command]
    output = answer["output"]
    assert answer["status"] == 0, f"README.md:{line}: `{command}` exited {answer['status']}:\n{output[-2000:]}"
    if tuple(argv_of(command)) in RUN_AS_IS:
        assert output.strip(), f"README.md:{line}: `{command}` printed nothing"
        return
    assert "usage:" in output, f"README.md:{line}: `{command} --help` printed no usage:\n{output[-2000:]}"
    help_words = set(re.findall(r"--[\w-]+", output))
    for flag in re.findall(r"(?:^|\s)(--[\w-]+)", command):
        assert flag in help_words, f"README.md:{line}: `{command}`: its --help names no {flag}"


def test_the_minidiff_console_script_starts():
    """The README's `minidiff ...` lines need the console script that `pip install -e .` puts on PATH."""
    script = Path(sys.executable).with_name("minidiff")
    script = str(script) if script.exists() else shutil.which("minidiff")
    if script is None:
        pytest.skip("no minidiff console script beside this Python or on PATH (pip install -e . makes one)")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0 and "usage: minidiff JOB" in done.stdout, done.stderr


def test_the_readme_python_example_runs(tmp_path):
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^```python[ \t]*\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) == 1, "README.md has one Python example"
    code = blocks[0] + "\nassert images.shape == (4, 3, 16, 16) and torch.isfinite(images).all()\nprint('ok')\n"
    done = subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(1)\n" + code], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def readme_run_folder() -> str:
    return re.search(r"to `runs/([^`/]+)/`", README.read_text(encoding="utf-8")).group(1)


def test_the_run_folder_the_readme_names_is_the_main_jobs():
    from minidiff.training.config import TrainConfig, default_run_name

    assert default_run_name(TrainConfig().resolved()) == readme_run_folder()


@pytest.mark.slow
def test_the_main_job_on_a_budget_of_two_steps_writes_what_the_readme_says(tmp_path):
    """`python train_cifar.py`, stopped after 2 steps and judged by no classifier, writes the files
    the README names (quality.json needs the judge, which the full run has)."""
    out = tmp_path / readme_run_folder()
    done = subprocess.run([sys.executable, "train_cifar.py", "--max-steps", "2", "--minutes", "0", "--threads", "1",
                           "--judge-samples", "0", "--num-samples", "4", "--sample-steps", "2", "--num-images", "64",
                           "--out", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("checkpoint.pt", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), (name, sorted(p.name for p in out.iterdir()))
    assert list(out.rglob("samples/*.png")) or len(list(out.rglob("*.png"))) > 1, "no sample grid"
