"""Coursework that checks itself: `minidiff course list | start N | check N FILE | run N FILE`.

Each exercise is one function of the course that a student writes from its docstring; `check`
grades it against facts (the papers' tables, identities, exact solutions, and minidiff's own
function on random inputs) and says in words what is wrong; `run` plugs it into the experiment
it belongs to and writes the figure. The library never imports this package.
"""
