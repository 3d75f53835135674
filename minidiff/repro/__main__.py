"""`python -m minidiff.repro NAME [options]`: run one reproduction experiment."""

import importlib
import sys

EXPERIMENTS = {
    "table1": "minidiff.repro.table1",
    "table2": "minidiff.repro.table2",
    "leakage": "minidiff.repro.leakage",
    "brightness": "minidiff.repro.brightness",
    "at-T": "minidiff.repro.at_t",
    "spacing": "minidiff.repro.spacing",
    "cfg-rescale": "minidiff.repro.cfg_rescale",
    "exact": "minidiff.repro.exact",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in EXPERIMENTS:
        names = ", ".join(EXPERIMENTS)
        print(f"usage: python -m minidiff.repro NAME [options]\n  NAME one of: {names}", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(EXPERIMENTS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
