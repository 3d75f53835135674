"""Grading a problem set's notebook: `minidiff course grade N NOTEBOOK [--json] [--all]`.

grade_notebook runs a copy of the notebook in a fresh kernel (nbclient, this Python), with its
answer cells only (the cells tagged minidiff-answer: figures and the student's own training are
skipped) and a time limit per cell, then one more cell that calls grade_here: every part's checks
(each with a time limit, as `check` has), then the trained part, which trains the student's model
with the student's functions and scores its samples against the band. grade_here writes its
results to a JSON file after the checks and again after the training, so a training that runs out
of time still leaves the checks' points.

In the notebook, check_part(N, KEY, globals()) runs one part's checks and prints their lines.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from .core import Result, UsageError
from .runner import CHECK_TIME_LIMIT, TIMED_OUT, check_with_limit
from .sets import problem_set

CELL_TIME_LIMIT = 120          # seconds an answer cell may take (they only define functions)
TRAIN_TIME_LIMIT = 20 * 60     # seconds the grading cell may take: checks, training and sampling


def _grade_function(ex, fn, hidden: bool, time_limit: float) -> list[Result]:
    if fn is None:
        return [Result(name, False, f"not written yet: the notebook defines no {ex.function}(...)") for name, _ in ex.graded(hidden)]
    results, timed_out = [], False
    for name, grade in ex.graded(hidden):
        if timed_out:
            results.append(Result(name, False, TIMED_OUT, skipped=True))
            continue
        r = check_with_limit(name, grade, fn, time_limit, getattr(getattr(fn, "__code__", None), "co_filename", None), "your cell")
        timed_out = "did not finish within" in r.message and not r.passed
        results.append(r)
    return results


def check_part(number: int, key: str, namespace: dict, *, hidden: bool = False, quiet: bool = False,
               time_limit: float = CHECK_TIME_LIMIT) -> list[Result]:
    """A part's checks on the functions in `namespace` (a notebook's globals()): one line each."""
    part = next((p for p in problem_set(number).parts if p.key == key), None)
    if part is None:
        raise UsageError(f"set {number} has no part {key!r}")
    results = []
    for ex in part.functions:
        rs = _grade_function(ex, namespace.get(ex.function), hidden, time_limit)
        if not quiet:
            for r in rs:
                print(f"{ex.function}: {r.line()}")
        results += rs
    if not quiet:
        print(f"part {key}: {sum(r.passed for r in results)}/{len(results)} checks pass")
    return results


def band_points(value: float, band: dict, points: float) -> float:
    """Full points at band["full"] or better, none at band["zero"] or worse, linear in between. Lower
    is better when full < zero (an FCD), higher when full > zero (an accuracy)."""
    sign = 1.0 if band["full"] < band["zero"] else -1.0
    if not value == value or sign * value >= sign * band["zero"]:  # NaN or past the band
        return 0.0
    if sign * value <= sign * band["full"]:
        return points
    return round(points * (band["zero"] - value) / (band["zero"] - band["full"]), 1)


def grade_here(number: int, namespace: dict, out: str, *, hidden: bool = False, steps: int | None = None,
               time_limit: float = CHECK_TIME_LIMIT) -> dict:
    """Grade every part on the functions in `namespace`; write the results to `out` (JSON) as they come."""
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("MINIDIFF_GRADE_THREADS", "2"))))
    ps = problem_set(number)
    start = time.perf_counter()
    report = dict(set=number, title=ps.title, score=0.0, total=ps.total, parts=[], figures={}, trained=None)

    def save():
        report["score"] = round(sum(p["points"] for p in report["parts"]), 1)
        report["seconds"] = round(time.perf_counter() - start, 1)
        Path(out).write_text(json.dumps(report, indent=1) + "\n")

    for part in ps.parts:
        if part.trained:
            continue
        results = check_part(number, part.key, namespace, hidden=hidden, quiet=True, time_limit=time_limit)
        passed = sum(r.passed for r in results)
        report["parts"].append(dict(part=part.key, title=part.title, points=round(part.points * passed / len(results), 1),
                                    max_points=part.points, passed=passed, checks=len(results),
                                    messages=[r.line() for r in results]))
        save()
    trained = [p for p in ps.parts if p.trained]
    if trained:
        _grade_trained(ps, trained, namespace, report, steps)
        save()
    save()
    return report


def _grade_trained(ps, parts: list, namespace: dict, report: dict, steps: int | None) -> None:
    """Train once with the student's functions (the set's trainer module), then give each trained part
    its points by its band on its measure."""
    entries = [dict(part=p.key, title=p.title, points=0.0, max_points=p.points, messages=[]) for p in parts]
    report["parts"] += entries

    def say(message: str) -> None:
        for entry in entries:
            entry["messages"].append(message)

    missing = [name for name in ps.needed if not callable(namespace.get(name))]
    unwritten = [p for p in report["parts"] if p.get("checks") and all("not written yet" in m for m in p["messages"])]
    if missing or unwritten:
        say("not trained: " + (f"the notebook defines no {', '.join(missing)}" if missing else
                               "not written yet: part " + ", ".join(p["part"] for p in unwritten)))
        return
    training = ps.training
    budget = training.BUDGET
    steps = steps or budget["steps"]
    try:
        samples = int(os.environ.get("MINIDIFF_SET_SAMPLES", budget["samples"]))  # fewer: the tests
        result = training.train_and_draw({name: namespace[name] for name in ps.needed}, steps=steps, samples=samples)
    except Exception as e:  # the student's functions raised during training or sampling
        say(f"training or sampling stopped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return
    keys = ("steps", "train_seconds", "sample_seconds", "samples") + tuple(p.measure for p in parts) + (
        "class_kl", "fcd_flawed", "accuracy_flawed", "brightness_ratio_fixed", "brightness_ratio_flawed",
        "data_brightness_std")
    report["trained"] = {k: result[k] for k in dict.fromkeys(keys) if k in result} | dict(
        bands={p.key: p.band for p in parts}, budget_steps=budget["steps"])
    if ps.band:
        report["trained"]["band"] = ps.band
    try:
        report["figures"] = training.figures(result)
    except Exception as e:  # a figure must never cost the points
        report["figures"] = {}
        say(f"(the figures could not be drawn: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    note = "" if steps == budget["steps"] else f" (the band is set at {budget['steps']} steps; this grading trained {steps})"
    points = {part.key: band_points(result[part.measure], part.band, part.points) for part in parts}
    for part, entry in zip(parts, entries):
        value = result[part.measure]
        entry["points"] = points[part.key]
        if part.gate and not points.get(part.gate):
            entry["points"] = 0.0
            entry["messages"].append(f"no points: part {part.gate} scored none, so these samples are not the data's "
                                     "images and their measure says nothing")
        better = "<=" if part.band["full"] < part.band["zero"] else ">="
        worse = ">=" if better == "<=" else "<="
        name = {"fcd": "FCD", "accuracy": "class accuracy", "brightness_gain": "brightness gain (fixed - flawed)"}.get(
            part.measure, part.measure)
        entry["messages"].append(f"{name} {value:.3g} ({result['samples']} samples, {steps} steps, "
                                 f"{result['train_seconds']:.0f} s of training): full points at {better} "
                                 f"{part.band['full']:g}, none at {worse} {part.band['zero']:g}{note}")


def _kernel_env(folder: Path) -> dict:
    """Environment for a kernel that runs this Python (a kernel spec written under `folder`)."""
    spec = folder / "jupyter" / "kernels" / "minidiff-grader"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "minidiff grader", "language": "python"}))
    return dict(JUPYTER_PATH=str(folder / "jupyter"), JUPYTER_RUNTIME_DIR=str(folder / "runtime"),
                IPYTHONDIR=str(folder / "ipython"), MPLBACKEND="Agg")


def grade_notebook(number: int, path: str | Path, *, hidden: bool = False, steps: int | None = None,
                   cell_time_limit: float = CELL_TIME_LIMIT, time_limit: float = TRAIN_TIME_LIMIT) -> dict:
    """Run the notebook's answer cells in a fresh kernel, then grade them there (see the module's docstring)."""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        raise UsageError("grading a notebook needs nbformat, nbclient and ipykernel: pip install nbformat nbclient "
                         "ipykernel (or minidiff's dev extra)") from None
    ps = problem_set(number)
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such notebook: {path} (write one with: minidiff course set {number} --dir D)")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # not JSON, not a notebook
        raise UsageError(f"{path} is not a notebook: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minidiff-grade-") as tmp:
        tmp = Path(tmp)
        out = tmp / "grade.json"
        keep = [c for c in nb.cells if c.cell_type == "code" and "minidiff-answer" in c.metadata.get("tags", [])]
        if not keep:  # a notebook without the set's tags: every code cell but the ones that train or draw
            keep = [c for c in nb.cells if c.cell_type == "code" and "train_and_draw" not in c.source]
        grader = nbformat.v4.new_code_cell(
            "from minidiff.course.grading import grade_here\n"
            f"_report = grade_here({number}, globals(), {str(out)!r}, hidden={hidden!r}, steps={steps!r})")
        run = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.source) for c in keep] + [grader],
                                       metadata=nb.metadata)
        env = {**os.environ, **_kernel_env(tmp)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        errors = []
        try:
            client = NotebookClient(run, timeout=cell_time_limit, kernel_name="minidiff-grader", allow_errors=True,
                                    resources={"metadata": {"path": str(path.parent.resolve())}})

            def on_cell_execute(cell, cell_index, **kw):  # the grading cell gets the training's time
                client.timeout = time_limit if cell_index == len(run.cells) - 1 else cell_time_limit

            client.on_cell_execute = on_cell_execute
            try:
                client.execute()
            except Exception as e:  # a cell past its time limit, or a kernel that died
                errors.append(f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        for i, c in enumerate(run.cells):
            for o in c.get("outputs", []):
                if o.get("output_type") == "error":
                    where = "the grading cell" if i == len(run.cells) - 1 else f"answer cell {i + 1}"
                    errors.append(f"{where} raised {o.get('ename')}: {o.get('evalue', '')}".strip())
        report = json.loads(out.read_text()) if out.exists() else dict(
            set=number, title=ps.title, score=0.0, total=ps.total, figures={}, trained=None,
            parts=[dict(part=p.key, title=p.title, points=0.0, max_points=p.points, messages=["not graded"]) for p in ps.parts])
    graded = {p["part"] for p in report["parts"]}
    for p in ps.parts:  # parts the grading cell did not reach (it ran out of time)
        if p.key not in graded:
            report["parts"].append(dict(part=p.key, title=p.title, points=0.0, max_points=p.points,
                                        messages=[f"not graded: the grading did not finish within {time_limit:g} s"]))
    report["notebook"] = str(path)
    report["errors"] = errors
    report["grade_seconds"] = round(time.perf_counter() - start, 1)
    return report


def format_report(report: dict) -> str:
    lines = [f"problem set {report['set']}: {report['title']} ({report['notebook']})"]
    for p in report["parts"]:
        lines.append(f"  part {p['part']} {p['title']}: {p['points']:g}/{p['max_points']:g}")
        lines += [f"      {m}" for m in p["messages"] if not m.startswith("PASS")]
    lines += [f"  {e}" for e in report.get("errors", [])]
    lines.append(f"score {report['score']:g}/{report['total']:g} (graded in {report['grade_seconds']:.0f} s)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Gradescope: results.json and the autograder zip of a whole set
# ------------------------------------------------------------------------------------------------


def gradescope_set_results(report: dict) -> dict:
    """Gradescope's results format: one test per part, its points, the part's lines as its output."""
    tests = [{"name": f"part {p['part']}: {p['title']}", "score": p["points"], "max_score": p["max_points"],
              "status": "passed" if p["points"] >= p["max_points"] else "failed",
              "output": "\n".join(p["messages"]), "visibility": "visible"} for p in report["parts"]]
    trained = report.get("trained") or {}
    output = f"problem set {report['set']}: {report['title']}: {report['score']:g}/{report['total']:g}"
    if trained:
        output += f"; your model: FCD {trained['fcd']:.2f} after {trained['steps']} steps"
    if report.get("errors"):
        output += "\n" + "\n".join(report["errors"])
    return {"score": report["score"], "max_score": report["total"], "output": output, "visibility": "visible",
            "stdout_visibility": "hidden", "tests": tests}


SET_SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, when it builds the autograder (the zip is unpacked in
# /autograder/source): minidiff from the copy of its source in this zip, with what grading a
# notebook needs (nbformat, nbclient, ipykernel); pip fetches torch and the rest from PyPI.
# Fashion-MNIST's training images come in this zip (data/), so grading downloads nothing.
set -euo pipefail
cd "$(dirname "$0")"
if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update && apt-get install -y python3 python3-pip
fi
python3 -m pip install --no-cache-dir . nbformat nbclient ipykernel || \\
    python3 -m pip install --no-cache-dir --break-system-packages . nbformat nbclient ipykernel
"""

SET_RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for each submission: grade problem set {number} on the .ipynb of the
# submission (a fresh kernel, every part, the student's model trained and scored) and write
# results/results.json. MINIDIFF_AUTOGRADER_ROOT replaces /autograder (a test's temporary folder),
# MINIDIFF_PYTHON the python3 that has minidiff; MINIDIFF_SET_STEPS shortens the training (tests).
ROOT="${{MINIDIFF_AUTOGRADER_ROOT:-/autograder}}"
PYTHON="${{MINIDIFF_PYTHON:-python3}}"
HERE="$(cd "$(dirname "$0")" && pwd)"
export MINIDIFF_FMNIST_ROOT="${{MINIDIFF_FMNIST_ROOT:-$HERE/data}}"
mkdir -p "$ROOT/results"
NOTEBOOK="$(find "$ROOT/submission" -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort | head -n 1)"
STEPS=()
if [ -n "${{MINIDIFF_SET_STEPS:-}}" ]; then STEPS=(--steps "$MINIDIFF_SET_STEPS"); fi
if [ -z "$NOTEBOOK" ]; then
    printf '{{"score": 0, "output": "no .ipynb in the submission: hand in your notebook of problem set {number}", "tests": []}}\\n' \\
        > "$ROOT/results/results.json"
    exit 0
fi
"$PYTHON" -m minidiff course grade {number} "$NOTEBOOK" --all "${{STEPS[@]}}" --gradescope "$ROOT/results/results.json"
if [ ! -s "$ROOT/results/results.json" ]; then  # the grader itself failed: say so, score 0
    printf '{{"score": 0, "output": "the autograder could not grade this submission (see the autograder output)", "tests": []}}\\n' \\
        > "$ROOT/results/results.json"
fi
exit 0
"""

def set_autograder_zip(number: int, out: str | Path | None = None) -> Path:
    """The Gradescope zip of problem set `number`: setup.sh, run_autograder, minidiff's source and
    the Fashion-MNIST training images the graded part trains on (data/, idx format, gzipped)."""
    import gzip
    import io
    import zipfile

    from .runner import autograder_zip
    from ..training.data import idx_dataset
    from .set_training import BUDGET as _B
    from .set_training import fashion_mnist_root

    ps = problem_set(number)
    name = f"minidiff_autograder_set{number:02d}.zip"
    path = Path(out) if out else Path(name)
    if path.is_dir():
        path = path / name
    autograder_zip(1, path)  # minidiff's source, the checks' setup; its scripts are replaced below
    if ps.data == "fashion-mnist":
        data = idx_dataset("fashion-mnist", fashion_mnist_root(), train=True)
        images, labels = data.images[:_B["images"], 0].numpy(), data.labels[:_B["images"]].numpy().astype("uint8")

    def idx_bytes(array, code: int) -> bytes:
        header = bytes([0, 0, 8, code]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
            f.write(header + array.tobytes())
        return buf.getvalue()

    with zipfile.ZipFile(path) as zf:
        kept = {n: zf.read(n) for n in zf.namelist() if n not in ("setup.sh", "run_autograder")}
        infos = {n: zf.getinfo(n) for n in kept}

    def info(name: str, executable: bool = False) -> zipfile.ZipInfo:
        i = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
        i.external_attr = (0o100755 if executable else 0o100644) << 16
        i.compress_type = zipfile.ZIP_DEFLATED
        return i

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info("setup.sh", True), SET_SETUP_SH)
        zf.writestr(info("run_autograder", True), SET_RUN_AUTOGRADER.format(number=number))
        for n, blob in kept.items():
            zf.writestr(infos[n], blob)
        if ps.data == "fashion-mnist":
            zf.writestr(info("data/train-images-idx3-ubyte.gz"), idx_bytes(images, 3))
            zf.writestr(info("data/train-labels-idx1-ubyte.gz"), idx_bytes(labels, 1))
    return path
