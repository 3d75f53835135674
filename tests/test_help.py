"""What a reader sees tells the truth: the trainer's help is read from RECIPES, and no help says
"(default: None)" or "else"."""

import math
import re
from fractions import Fraction
from pathlib import Path

import pytest

from minidiff.training import config
from minidiff.training.recipes import LABELS, RECIPES
from minidiff.training.sample import parse_args as sample_parse_args


def help_text(parse, capsys) -> str:
    with pytest.raises(SystemExit):
        parse(["--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines; compare as one line


def read_value(word: str):
    """A value as the help writes it, read back to Python (the inverse of the help's formatting)."""
    if word in ("on", "off"):
        return word == "on"
    if word == "no limit":
        return None
    if word == "on when the data has classes":
        return LABELS
    if "/" in word:
        return float(Fraction(word))
    try:
        return int(word)
    except ValueError:
        pass
    try:
        return float(word)
    except ValueError:
        return word


def test_every_recipe_flag_names_each_recipes_value(capsys):
    helps = {action.dest: " ".join(action.help.split()) for action in config.build_parser()._actions}
    keys = {key for recipe in RECIPES.values() for key in recipe}
    for key in sorted(keys):
        assert key in helps, f"recipe setting {key} has no flag"
        found = re.search(r"\(recipe: builtin (.+?), folder (.+?), cifar10 ([^,]+?)\)$", helps[key])
        assert found, f"--{key}: its help names no recipe values: {helps[key]!r}"
        for name, word in zip(("builtin", "folder", "cifar10"), found.groups()):
            want, got = RECIPES[name][key], read_value(word)
            if isinstance(want, float) and isinstance(got, (int, float)):
                assert math.isclose(got, want, rel_tol=1e-3) or (math.isinf(want) and got == want), (key, name)
            else:
                assert got == want, f"--{key}: help says {name} {word!r}, RECIPES[{name!r}] holds {want!r}"
    text = help_text(config.parse_args, capsys)
    # fashion-mnist and mnist are the folder's recipe, which the description says
    assert RECIPES["fashion-mnist"] is RECIPES["folder"] is RECIPES["mnist"]
    assert "also the recipe of fashion-mnist and mnist" in text


def test_a_changed_recipe_changes_the_help(capsys, monkeypatch):
    monkeypatch.setitem(RECIPES["folder"], "lr", 7e-4)
    assert "(recipe: builtin 0.002, folder 0.0007, cifar10 0.0002)" in help_text(config.parse_args, capsys)


@pytest.mark.parametrize("parse", [config.parse_args, sample_parse_args], ids=["train", "sample"])
def test_help_says_no_none_default_and_no_else(parse, capsys):
    text = help_text(parse, capsys)
    assert "(default: None)" not in text
    assert not re.search(r"\belse\b", text)


def test_sample_help_lists_every_sampler(capsys):
    from minidiff.samplers import SAMPLERS

    text = help_text(sample_parse_args, capsys)
    entry = text[text.rindex("--sampler "):]
    for name in ("DDIM", "DDPM", "DPM-Solver++", "Heun", "Euler"):
        assert name in entry[:400]
    assert len(SAMPLERS) == 6


def test_no_two_training_modules_differ_by_one_letter():
    names = sorted(p.stem for p in (Path(config.__file__).parent).glob("*.py"))

    def one_edit_apart(a, b):
        if abs(len(a) - len(b)) > 1 or a == b:
            return False
        if len(a) == len(b):
            return sum(x != y for x, y in zip(a, b)) == 1
        short, long_ = sorted((a, b), key=len)
        return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))

    close = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if one_edit_apart(a, b)]
    assert not close, f"modules whose names differ by one letter: {close}"
