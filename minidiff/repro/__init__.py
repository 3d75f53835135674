"""Reproductions of the papers' findings, one module per experiment.

Run one with `python -m minidiff.repro NAME`; each writes figures and a JSON of numbers.
"""
