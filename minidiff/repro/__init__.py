"""Reproductions of both papers' findings, one module per experiment.

Run one with `minidiff repro NAME` (`--help` lists them all); each writes figures and a
JSON of numbers under runs/repro/NAME.
"""
