"""The front page and the docs: short where a reader starts, and every link and picture there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files():
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_front_page_is_short_and_shows_the_main_jobs_samples_near_the_top():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; measurements belong in docs/"
    top = "\n".join(lines[:40])
    pictures = [m for m in LINK.findall(top) if m.endswith(".png")]
    assert pictures and (ROOT / pictures[0]).is_file(), pictures


def test_the_recipe_history_is_a_page_of_decisions():
    assert len((ROOT / "docs" / "recipe_history.md").read_text().splitlines()) <= 250


def test_every_relative_link_and_picture_in_readme_and_docs_exists():
    missing = []
    for page in markdown_files():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address, or an anchor on the same page
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert not missing, "links to nothing:\n" + "\n".join(missing)


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("see [x](nowhere.md) and [y](https://example.org) and ![z](p.md)")
    targets = [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]
    assert [t for t in targets if not (page.parent / t).exists()] == ["nowhere.md"]


def test_the_papers_loss_in_the_core_stays_short():
    """Issue 30: objectives.diffusion_loss is the paper's eq. 12 and no more (body <= 25 lines)."""
    import ast

    tree = ast.parse((ROOT / "minidiff" / "objectives.py").read_text())
    loss = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "diffusion_loss")
    body = loss.body[1:]  # after the docstring
    assert body[-1].end_lineno - body[0].lineno + 1 <= 25
