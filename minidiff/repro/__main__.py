"""`minidiff repro NAME [options]`: run one reproduction experiment of either paper.

`minidiff repro --help` lists them, each with the first line of its module's docstring;
`minidiff repro NAME --help` shows an experiment's flags. Every experiment writes its
figures and a JSON of numbers under runs/repro/NAME (`--out`), and copies its figures into a
second folder only when asked (`--figures-dir docs/figures` updates the course's figures).
"""

import ast
import importlib
import importlib.util
import sys

# name -> module (with a main(argv) function); the list shown by --help keeps this order
EXPERIMENTS = {
    "table1": "minidiff.repro.table1",
    "table2": "minidiff.repro.table2",
    "leakage": "minidiff.repro.leakage",
    "brightness": "minidiff.repro.brightness",
    "at-T": "minidiff.repro.at_t",
    "spacing": "minidiff.repro.spacing",
    "cfg-rescale": "minidiff.repro.cfg_rescale",
    "exact": "minidiff.repro.exact",
    "fast-samplers": "minidiff.repro.fast_samplers",
    "flow": "minidiff.repro.flow",
    "img2img": "minidiff.repro.img2img",
    "inpaint": "minidiff.repro.inpaint",
    "thresholding": "minidiff.repro.thresholding",
    "zero-snr-designs": "minidiff.repro.zero_snr_designs",
    "start-step": "minidiff.repro.start_step",
    "frequencies": "minidiff.repro.frequencies",
    "ve-terminal": "minidiff.repro.ve_terminal",
    "weighting": "minidiff.repro.weighting",
    "highdim-trajectories": "minidiff.repro.highdim_trajectories",
    "highdim-features": "minidiff.repro.highdim_features",
    "highdim-table": "minidiff.repro.highdim_table",
    "highdim-bridge": "minidiff.repro.highdim_bridge",
}


def summary(module: str) -> str:
    """The first line of a module's docstring, read from its source without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return "(module not found)"
    with open(spec.origin, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    return doc.split("\n")[0].strip()


def usage() -> str:
    width = max(map(len, EXPERIMENTS))
    lines = ["usage: minidiff repro NAME [options]   (NAME --help: the experiment's options)", "",
             "experiments:"]
    lines += [f"  {name:{width}s}  {summary(module)}" for name, module in EXPERIMENTS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    if argv[0] not in EXPERIMENTS:
        print(f"error: unknown experiment {argv[0]!r}; choose one of {', '.join(EXPERIMENTS)} "
              "(minidiff repro --help describes them)", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(EXPERIMENTS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
