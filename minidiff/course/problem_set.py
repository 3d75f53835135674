"""The records a problem set is made of: its parts and the set itself (sets.py and set2.py fill them in)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Part:
    """One part of a set: its text, the functions it grades, its points, and what else the notebook shows."""

    key: str
    title: str
    text: str                      # markdown: what to write, the equation, why it matters
    functions: list = field(default_factory=list)  # Exercise records whose checks grade this part
    points: float = 10.0
    solution: str = ""             # the teacher's code for the answer cell
    figure: str = ""               # code of a cell that draws what the part must produce (skipped when grading)
    question: str = ""             # a written question
    answer: str = ""               # its answer, in the solution notebook only
    trained: bool = False          # graded by training the student's model and scoring its samples
    measure: str = ""              # a trained part: the key of the training's result its band reads
    band: dict | None = None       # {"full": x, "zero": y}: full points at x or better, none at y or worse
    gate: str = ""                 # a trained part: the key of another trained part that must score above 0 first


@dataclass
class ProblemSet:
    number: int
    title: str
    intro: str
    parts: list
    student_hours: str
    band: dict                      # set 1's trained part's band (also its Part.band)
    trainer: str = "minidiff.course.set_training"   # the module with BUDGET, train_and_draw(fns, ...) and figures
    needed: tuple = ("v_loss", "train_loop", "ddim_sample")  # the student's functions the training uses
    train_minutes: str = "5"        # CPU-minutes of the graded training on 2 cores (docs/exercises/problem_sets.md)
    data: str | None = "fashion-mnist"  # what the autograder zip must carry for the training (None: nothing)

    @property
    def training(self):
        import importlib

        return importlib.import_module(self.trainer)

    @property
    def total(self) -> float:
        return sum(p.points for p in self.parts)

    def functions(self) -> list[Exercise]:
        return [ex for p in self.parts for ex in p.functions]
