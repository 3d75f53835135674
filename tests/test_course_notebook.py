"""`minidiff course notebook N`: the notebook of every exercise is valid nbformat v4, its starter cell
is the .py starter's function, and with the reference solution filled in it runs top to bottom in a
real Jupyter kernel with every check passing and the experiment's figure drawn inline."""

import ast
import json
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from minidiff.course import notebook  # noqa: E402
from minidiff.course.__main__ import main as course_main  # noqa: E402
from minidiff.course.core import UsageError  # noqa: E402
from minidiff.course.exercises import EXERCISES  # noqa: E402

CELLS = ["page", "install", "starter", "check", "run"]
FAST = 4  # the exercise the default run executes (the example; kernel start-up dominates)


def cell(nb, name):
    (found,) = [c for c in nb.cells if c.metadata.get("tags") == [f"minidiff-{name}"]]
    return found


def written(number, folder):
    return nbformat.read(notebook.write_notebook(number, folder), as_version=4)


@pytest.mark.parametrize("number", sorted(EXERCISES))
def test_notebook_is_valid_and_its_starter_is_the_py_starters_function(number, tmp_path, capsys):
    path = notebook.write_notebook(number, tmp_path)
    assert path.name == f"ex{number:02d}_{EXERCISES[number].slug.replace('-', '_')}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert [c.id for c in nb.cells] == CELLS
    assert [c.cell_type for c in nb.cells] == ["markdown"] + ["code"] * 4

    # the .py starter, as `minidiff course start N` writes it, and its function's text
    assert course_main(["start", str(number), "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    (py,) = tmp_path.glob(f"ex{number:02d}_*.py")
    source = py.read_text()
    (func,) = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
    ex = EXERCISES[number]
    assert func.name == ex.function
    assert cell(nb, "starter").source == ast.get_source_segment(source, func)
    # the starter's imports are in the install cell, so the starter cell runs as it is
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            assert ast.get_source_segment(source, node) in cell(nb, "install").source

    page = cell(nb, "page").source
    assert page.startswith(f"# Exercise {number}: {ex.title}")
    assert ex.paper in page and ex.function in page
    assert "try:\n    import minidiff\nexcept ImportError:\n    %pip install" in cell(nb, "install").source
    assert cell(nb, "check").source.endswith(f"from minidiff.course import check\n\ncheck({number}, {ex.function})")
    assert f"EXERCISES[{number}].run({ex.function}, out, quick)" in cell(nb, "run").source
    for c in nb.cells[1:]:
        if "%pip" not in c.source:
            ast.parse(c.source)  # every code cell is Python (the install cell holds an IPython magic)


def test_the_page_embeds_the_course_figure_and_falls_back_to_the_docstring(tmp_path, monkeypatch):
    nb = written(FAST, tmp_path / "a")
    page = cell(nb, "page")
    (name,) = page.attachments
    assert f"](attachment:{name})" in page.source and page.attachments[name]["image/png"]
    assert "](../" not in page.source  # relative links do not resolve in a notebook
    assert "minidiff course" not in page.source  # the shell commands are cells here

    monkeypatch.setattr(notebook, "DOCS", tmp_path / "no-docs")  # an installed minidiff without docs/
    nb = written(FAST, tmp_path / "b")
    nbformat.validate(nb)
    page = cell(nb, "page")
    assert "attachments" not in page
    assert EXERCISES[FAST].docstring.strip().splitlines()[0] in page.source


def test_never_overwrites_and_bad_input_is_one_line(tmp_path):
    path = notebook.write_notebook(1, tmp_path)
    path.write_text("the student's work")
    with pytest.raises(FileExistsError, match="exists; not overwritten"):
        notebook.write_notebook(1, tmp_path)
    assert path.read_text() == "the student's work"
    with pytest.raises(UsageError, match="no exercise 99"):
        notebook.write_notebook(99, tmp_path)
    with pytest.raises(UsageError, match="is a file, not a folder"):
        notebook.write_notebook(2, path)
    assert notebook.write_notebook(2, tmp_path / "new" / "folder").is_file()
    assert notebook.write_notebook(3, tmp_path, source="minidiff @ file:///course/minidiff") \
        .read_text().count("file:///course/minidiff") == 1


def test_the_command_writes_the_notebook(tmp_path, capsys):
    assert course_main(["notebook", "4", "--dir", str(tmp_path)]) == 0
    assert str(tmp_path / "ex04_objectives.ipynb") in capsys.readouterr().out
    nbformat.validate(nbformat.read(tmp_path / "ex04_objectives.ipynb", as_version=4))


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A python3 kernel spec running this interpreter (nothing installed with `ipykernel install`),
    Jupyter's and IPython's files under tmp_path, and the experiments' quick settings."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched before the environment's
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MINIDIFF_QUICK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


def text_of(c) -> str:
    out = []
    for o in c.outputs:
        if o.output_type == "stream":
            out.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            out.append(o.data.get("text/plain", ""))
        elif o.output_type == "error":
            out.append(f"{o.ename}: {o.evalue}")
    return "".join(out)


def run_with_reference(number, folder):
    """Write the notebook, put minidiff's own function in the starter cell, execute it all."""
    ex = EXERCISES[number]
    path = notebook.write_notebook(number, folder)
    nb = nbformat.read(path, as_version=4)
    ref = ex.reference
    cell(nb, "starter").source = f"from {ref.__module__} import {ref.__name__} as {ex.function}"
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})
    client.execute()  # raises CellExecutionError if any cell raises
    return nb


def assert_every_check_passes_and_the_figure_is_drawn(nb, number, folder):
    checked = text_of(cell(nb, "check"))
    counts = re.findall(r"(\d+)/(\d+) checks pass", checked)
    assert counts, checked
    passed, total = map(int, counts[-1])
    assert passed == total == len(EXERCISES[number].checks), checked
    assert "FAIL" not in checked
    assert checked.count("PASS") >= total
    images = [o for o in cell(nb, "run").outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert images, text_of(cell(nb, "run"))
    assert list((folder / "runs" / "course" / str(number)).glob("*.png"))  # relative to the notebook


def test_the_notebook_runs_in_a_kernel_with_the_reference(kernel_env):
    nb = run_with_reference(FAST, kernel_env)
    assert_every_check_passes_and_the_figure_is_drawn(nb, FAST, kernel_env)


@pytest.mark.slow
@pytest.mark.parametrize("number", [n for n in sorted(EXERCISES) if n != FAST])
def test_every_notebook_runs_in_a_kernel_with_the_reference(number, kernel_env):
    nb = run_with_reference(number, kernel_env)
    assert_every_check_passes_and_the_figure_is_drawn(nb, number, kernel_env)
