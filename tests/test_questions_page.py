"""docs/questions.md: every question of ../shared/QUESTIONS.md's two sets and the authors' directions has
a row, each row names a command (or says why none can answer it), and every command it names parses."""

import re
from pathlib import Path

import pytest

from test_commands import job_argv  # tests/ is on sys.path under pytest's default import mode

from minidiff.__main__ import JOBS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "questions.md"
HEADING = re.compile(r"^### (A|B|D)(\d+)\. ", re.M)
INLINE = re.compile(r"`(minidiff [^`]+)`")


def sections() -> dict:
    text = PAGE.read_text(encoding="utf-8")
    marks = list(HEADING.finditer(text))
    return {f"{m.group(1)}{m.group(2)}": text[m.end():(marks[i + 1].start() if i + 1 < len(marks) else len(text))]
            for i, m in enumerate(marks)}


def test_every_question_and_direction_has_a_section():
    found = sections()
    wanted = [f"A{i}" for i in range(1, 11)] + [f"B{i}" for i in range(1, 11)] + [f"D{i}" for i in range(1, 7)]
    assert list(found) == wanted


def test_each_section_names_a_command_or_why_not():
    for key, body in sections().items():
        assert INLINE.search(body) or "No experiment" in body, f"{key} names no command and no reason"
        assert "What the data says" in body or "No experiment" in body, key


def test_the_course_index_links_the_page():
    index = (PAGE.parent / "README.md").read_text(encoding="utf-8")
    assert "(questions.md)" in index


COMMANDS = sorted({m.group(1) for m in INLINE.finditer(PAGE.read_text(encoding="utf-8"))}) if PAGE.exists() else []


@pytest.mark.parametrize("line", COMMANDS)
def test_every_command_on_the_page_parses(line, monkeypatch):
    """Each inline command: the job exists, and its parser (the experiment's, for repro) accepts the flags."""
    import argparse

    from minidiff.__main__ import main

    argv = job_argv(line)
    assert argv[0] in JOBS, line

    class Parsed(Exception):
        pass

    def parse_only(self, args=None, namespace=None):
        argparse.ArgumentParser.parse_known_args(self, args, namespace)
        if "..." not in (args or []):
            _, extra = argparse.ArgumentParser.parse_known_args(self, args, namespace)
            assert not extra, f"unrecognized arguments {extra} in: {line}"
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    try:
        main(argv)
    except Parsed:
        return
    except SystemExit as exit_:
        pytest.fail(f"`{line}` exits {exit_.code} before its parser accepts it")


def test_the_table_of_contents_links_reach_their_sections():
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = PAGE.read_text(encoding="utf-8")
    slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) == 26 and not [a for a in links if a not in slugs]
