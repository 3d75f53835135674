"""The one command, `minidiff JOB` (= `python -m minidiff JOB`): its list of jobs, each job's own
--help, its errors, and every command line the README and docs/ show, parsed by the job's parser."""

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from minidiff.__main__ import JOBS, main

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["train", "sample", "metrics", "fid", "brightness-gain", "explore", "repro", "course", "minisd",
         "train-latent", "sample-latent"]
NEEDS_DIFFUSERS = {"train-latent", "sample-latent"}
SCRIPTS = {"train_cifar.py": "train", "train_latent.py": "train-latent"}


def run_minidiff(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "minidiff", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def needs(name: str) -> None:
    if name in NEEDS_DIFFUSERS:
        pytest.importorskip("diffusers", reason=f"minidiff {name} needs the latent extra")


# ------------------------------------------------------------------------------ the list of jobs


def test_help_lists_every_job_with_one_line_each():
    done = run_minidiff("--help")
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("  ")}
    assert list(listed) == NAMES == list(JOBS)
    assert all(len(line.split()) > 3 for line in listed.values())  # a description beside each name


def test_help_imports_no_job_module():
    code = ("import sys; from minidiff.__main__ import main; main(['--help']); "
            "print(sorted(m for m in sys.modules if m.startswith(('minidiff.training', 'minidiff.evaluation', "
            "'minidiff.latent', 'minidiff.repro', 'minidiff.course', 'diffusers', 'transformers'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_no_job_prints_the_list_and_exits_2(capsys):
    assert main([]) == 2
    assert "sample-latent" in capsys.readouterr().err


def test_an_unknown_job_is_one_line_and_exit_2():
    done = run_minidiff("trian", "--steps", "3")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: unknown command 'trian'; choose one of train, sample,")


def test_the_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    scripts = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert scripts and re.search(r'^minidiff\s*=\s*"minidiff\.__main__:main"', scripts.group(1), re.M)


# ---------------------------------------------------------------------------- each job's --help


@pytest.mark.parametrize("name", NAMES)
def test_each_job_help_names_minidiff_job(name, capsys):
    needs(name)
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert f"usage: minidiff {name}" in " ".join(out.split())


def test_each_repro_experiment_help_names_minidiff_repro_name(capsys):
    from minidiff.repro.__main__ import EXPERIMENTS

    for name in EXPERIMENTS:
        with pytest.raises(SystemExit) as exit_:
            main(["repro", name, "--help"])
        assert exit_.value.code == 0
        assert f"usage: minidiff repro {name}" in " ".join(capsys.readouterr().out.split())


def test_an_unknown_repro_experiment_or_course_subcommand_exits_2(capsys):
    for argv in (["repro", "table9"], ["course", "lisst"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


# --------------------------------------------------------------- the command lines of README and docs

SHELL_BLOCK = re.compile(r"^[ \t]*```(?:bash|sh|shell|console)[ \t]*\n(.*?)^[ \t]*```", re.M | re.S)
COMMAND_START = re.compile(r"^(?:\$\s+)?(?:[A-Za-z_]\w*=\S*\s+)*"
                           r"(?:minidiff(?:\s|$)|python3?\s+(?:-m\s+minidiff|train_cifar\.py|train_latent\.py)"
                           r"|torchrun\s.*\btrain_(?:cifar|latent)\.py)")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "2>&1", "&>", "<"}


def doc_commands() -> list:
    """(file:line, command) for each command line in a shell block of README.md and docs/*.md,
    backslash continuations joined."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        for block in SHELL_BLOCK.finditer(text):
            first = text.count("\n", 0, block.start(1)) + 1
            lines = block.group(1).split("\n")
            i = 0
            while i < len(lines):
                start, line = i, lines[i].strip()
                while line.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line[:-1] + " " + lines[i].strip()
                i += 1
                if COMMAND_START.match(line):
                    found.append(pytest.param(line, id=f"{path.relative_to(ROOT)}:{first + start}"))
    return found


def job_argv(line: str) -> list[str]:
    """`minidiff`'s argv for a documented command line (its job first), or a failure saying why not."""
    tokens = shlex.split(line.removeprefix("$").strip(), comments=True)
    for i, token in enumerate(tokens):
        if token in SHELL_OPERATORS:
            tokens = tokens[:i]
            break
    while tokens and re.match(r"^[A-Za-z_]\w*=", tokens[0]):  # VAR=value before the command
        tokens = tokens[1:]
    head = tokens[0]
    if head == "minidiff":
        return tokens[1:]
    if head in ("python", "python3") and tokens[1] == "-m":
        if tokens[2] == "minidiff":
            return tokens[3:]
        pytest.fail(f"`python -m {tokens[2]}` is an old module path: write `minidiff JOB ...` "
                    f"(minidiff --help lists the jobs)")
    for i, token in enumerate(tokens):  # python train_cifar.py ..., torchrun ... train_latent.py ...
        if Path(token).name in SCRIPTS:
            return [SCRIPTS[Path(token).name], *tokens[i + 1:]]
    pytest.fail(f"not a minidiff command: {line}")


class Parsed(Exception):
    """Raised in place of running a job once its parser accepted the line."""


def subparsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from subparsers(sub)


@pytest.mark.parametrize("line", doc_commands())
def test_documented_command_line_parses(line, monkeypatch, capsys):
    """The job exists (and its experiment or sub-command), and its own parser accepts every flag
    and value on the line; nothing runs. A line with `...` may leave required arguments out."""
    argv = job_argv(line)
    assert argv, f"no job on the line: {line}"
    assert argv[0] in JOBS, f"unknown job {argv[0]!r} in: {line}"
    needs(argv[0])
    elided = "..." in argv
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        if elided:
            for parser in subparsers(self):
                for action in parser._actions:
                    action.required = False
            _, extra = self.parse_known_args(args, namespace)
            if [a for a in extra if a != "..."]:
                self.error(f"unrecognized arguments: {' '.join(a for a in extra if a != '...')}")
        else:
            original(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    try:
        status = main(argv)
    except Parsed:
        return
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err.strip().splitlines() or [""]
    pytest.fail(f"`minidiff {' '.join(map(shlex.quote, argv))}` stopped with status {status}: {err[-1]}")
