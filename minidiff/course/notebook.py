"""`minidiff course notebook N [--dir D]`: exercise N as a Jupyter notebook to hand out.

The notebook has five cells, in this order (each tagged in its metadata, `minidiff-<name>`):

1. `page`: the exercise's title, paper and task (the key equation, in the function's docstring),
   the course page's first figure and what `run` shows; read from docs/exercises/NN_<slug>.md when
   minidiff runs from its source, from the exercise record otherwise;
2. `install`: installs minidiff when the kernel lacks it (so the notebook opens in Colab), then
   the imports the starter file has;
3. `starter`: the signature and docstring, body `raise NotImplementedError`, generated from the
   exercise record (`starter_function`): the .py starter's function (`minidiff course start N`),
   character for character, never written by hand;
4. `check`: `from minidiff.course import check`, then `check(N, function)`;
5. `run`: the exercise's experiment with the student's function, its figures shown inline
   (MINIDIFF_QUICK=1 in the environment runs the short version, as the tests do).

nbformat is imported where it is used, so the course needs Jupyter only to write a notebook.
"""

from __future__ import annotations

import base64
import posixpath
import re
from pathlib import Path

from .core import UsageError
from .exercises import EXERCISES

# Where the install cell gets minidiff from. The exercises and their checks ship with minidiff's
# source, so this is the course's copy of the repository (a teacher passes theirs as `source`).
SOURCE = "minidiff @ git+https://github.com/YOUR-COURSE/minidiff.git"
DOCS = Path(__file__).resolve().parents[2] / "docs"  # present when minidiff runs from its source
MAX_FIGURE_BYTES = 400_000  # the course page's figure is embedded in the notebook up to this size


class NotebookExists(UsageError, FileExistsError):
    """The notebook is already there; it is never overwritten (the student's work is in it). A
    UsageError, so the command says it in one line; a FileExistsError for Python callers."""


def notebook_name(number: int) -> str:
    """exNN_<slug>.ipynb: the name of the .py starter (`minidiff course start N`), .ipynb."""
    return f"ex{number:02d}_{EXERCISES[number].slug.replace('-', '_')}.ipynb"


def starter_function(number: int) -> str:
    """The starter's function from the exercise record: its signature and docstring, and a body
    that raises NotImplementedError. The text of the .py starter's function, character for
    character (a test compares them); the .py starter's imports are STARTER_IMPORTS."""
    ex = EXERCISES[number]
    doc = "\n".join(("    " + line) if line else "" for line in ex.docstring.splitlines())
    return (f'{ex.signature}\n    """{doc.lstrip()}\n    """\n'
            f'    raise NotImplementedError("exercise {number}: write this function")')


STARTER_IMPORTS = "import math\n\nimport torch"  # what the .py starter imports above its function


def write_notebook(number: int, folder: Path, *, source: str | None = None) -> Path:
    """Write folder/exNN_<slug>.ipynb for exercise `number` and return its path.

    Never overwrites: an existing notebook raises NotebookExists (a FileExistsError) saying so.
    A bad number, or a folder that is a file, raises UsageError in one line. `source` is what the
    install cell gives to `pip install` when minidiff is missing (default: SOURCE, a placeholder
    for the course's git URL)."""
    try:
        import nbformat  # Jupyter is needed only here
        from nbformat import v4
    except ImportError:
        raise UsageError("writing a notebook needs nbformat: pip install nbformat (or minidiff's dev extra)") from None

    if number not in EXERCISES:
        raise UsageError(f"no exercise {number}: the exercises are 1 to {max(EXERCISES)} (minidiff course list)")
    folder = Path(folder)
    path = folder / notebook_name(number)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a folder: give --dir a folder for the notebook")
    if path.exists():
        raise NotebookExists(f"{path} exists; not overwritten (open it with: jupyter notebook {path})")
    ex = EXERCISES[number]

    page, attachments = _page(number)
    cells = [
        v4.new_markdown_cell(page, attachments=attachments) if attachments else v4.new_markdown_cell(page),
        v4.new_code_cell(_install_cell(STARTER_IMPORTS, source or SOURCE)),
        v4.new_code_cell(starter_function(number)),
        v4.new_code_cell(f"# Grade your function: one line per check, with a hint for each failure.\n"
                         f"from minidiff.course import check\n\ncheck({number}, {ex.function})"),
        v4.new_code_cell(_run_cell(number, ex.function)),
    ]
    for cell, name in zip(cells, ("page", "install", "starter", "check", "run")):
        cell.id = name  # fixed ids: the same exercise always gives the same notebook
        cell.metadata["tags"] = [f"minidiff-{name}"]
    nb = v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "minidiff": {"exercise": number, "function": ex.function},
    })
    nbformat.validate(nb)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as f:  # "x": never overwrite, even in a race
            nbformat.write(nb, f)
    except FileExistsError:
        raise NotebookExists(f"{path} exists; not overwritten (open it with: jupyter notebook {path})") from None
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    return path


# ------------------------------------------------------------------------------------------------
# The cells
# ------------------------------------------------------------------------------------------------


def _install_cell(imports: str, source: str) -> str:
    return (
        "# minidiff, when this kernel does not have it (Colab, a fresh environment). The exercises and\n"
        "# their checks come with the course's source of minidiff, so install that (your course's git\n"
        "# URL or folder), not a package of the same name from elsewhere.\n"
        "try:\n"
        "    import minidiff\n"
        "except ImportError:\n"
        f"    %pip install --quiet \"{source}\"\n"
        "    import importlib\n"
        "    importlib.invalidate_caches()\n"
        "    import minidiff\n\n"
        f"{imports}\n"
    ).rstrip("\n")


def _run_cell(number: int, function: str) -> str:
    return (
        "# Your function in the experiment it belongs to; the figures it draws appear below.\n"
        "# MINIDIFF_QUICK=1 in the environment runs the short version (what the tests use).\n"
        "import os\n"
        "from pathlib import Path\n\n"
        "from IPython.display import Image, display\n\n"
        "from minidiff.course.exercises import EXERCISES\n\n"
        f"out = Path(\"runs/course/{number}\")\n"
        "quick = os.environ.get(\"MINIDIFF_QUICK\", \"\") not in (\"\", \"0\")\n"
        "before = {p: p.stat().st_mtime_ns for p in out.rglob(\"*.png\")}\n"
        f"for line in EXERCISES[{number}].run({function}, out, quick):\n"
        "    print(line)\n"
        "for png in sorted(out.rglob(\"*.png\")):\n"
        "    if before.get(png) != png.stat().st_mtime_ns:  # the figures this run wrote\n"
        "        display(Image(filename=str(png)))"
    )


def _page(number: int) -> tuple[str, dict | None]:
    """The first cell's markdown, and its attachments (the course page's figure) or None."""
    ex = EXERCISES[number]
    exercise_page = DOCS / "exercises" / f"{number:02d}_{ex.slug}.md"
    if not exercise_page.is_file():  # an installed minidiff without its docs: the record alone
        return (f"# Exercise {number}: {ex.title}\n\n{ex.paper}.\n\n"
                f"Write `{ex.signature[4:].rstrip(':')}`:\n\n```text\n{ex.docstring.strip()}\n```\n\n"
                f"{_steps(ex.function)}"), None
    sections = re.split(r"^## ", exercise_page.read_text(encoding="utf-8"), flags=re.M)
    intro = re.sub(r"```bash\n.*?```\n*", "", sections[0], flags=re.S)  # the shell commands: cells here
    parts = [_links(intro.strip(), "docs/exercises")]
    attachments = None
    figure = _figure(DOCS / ex.page)
    if figure:
        name, caption, data = figure
        attachments = {name: {"image/png": data}}
        parts.append(f"From the course page (`docs/{ex.page}`): {caption}.\n\n![{caption}](attachment:{name})")
    for section in sections[1:]:
        heading, _, body = section.partition("\n")
        if heading.startswith("What `run` shows"):
            parts.append(f"**What the run cell shows.** {_links(body.strip(), 'docs/exercises')}")
    parts.append(_steps(ex.function))
    return "\n\n".join(parts), attachments


def _steps(function: str) -> str:
    return (f"Write the body of `{function}` in the third cell, run it, then the check cell (one line per "
            "check, with a hint for each failure) and the run cell (the experiment with your function).")


def _links(text: str, here: str) -> str:
    """Relative markdown links, which do not resolve inside a notebook, as the repository path."""
    def path(m):
        text, target = m.groups()
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return m.group(0)
        where = posixpath.normpath(posixpath.join(here, target))
        return f"`{where}`" if text.strip("`") in (target, posixpath.basename(target)) else f"{text} (`{where}`)"

    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", path, text)


def _figure(course_page: Path) -> tuple[str, str, str] | None:
    """(file name, caption, base64 PNG) of the course page's first figure, if small enough."""
    if not course_page.is_file():
        return None
    m = re.search(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", course_page.read_text(encoding="utf-8"))
    if not m:
        return None
    png = course_page.parent / m.group(2)
    if not png.is_file() or png.stat().st_size > MAX_FIGURE_BYTES:
        return None
    return png.name, m.group(1), base64.b64encode(png.read_bytes()).decode("ascii")
