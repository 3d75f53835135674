"""minidiff: a minimal diffusion library for reading, changing and reproducing papers.

Data flows one way: schedules -> objectives -> samplers <- a model.
"""

__version__ = "0.1.0"
