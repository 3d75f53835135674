"""The list of exercises, in the order of the course (number -> Exercise)."""

from __future__ import annotations

from . import ex_brightness, ex_editing, ex_flow, ex_guidance, ex_highdim, ex_sampling, ex_schedules, ex_training

GROUPS = (ex_schedules, ex_sampling, ex_guidance, ex_highdim, ex_training, ex_brightness, ex_flow, ex_editing)
EXERCISES = {ex.number: ex for group in GROUPS for ex in group.EXERCISES}

from . import experiments, experiments_highdim, experiments_training  # noqa: E402  (the runs import the exercise modules' facts)

for _n, _run in {**experiments.RUNS, **experiments_highdim.RUNS, **experiments_training.RUNS}.items():
    EXERCISES[_n].run = _run
