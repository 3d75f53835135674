"""benchmarks/fmnist_study.py: its sampler settings and the study table's means and seed spreads."""

import json

import pytest
from scripts import load_script


def study():
    return load_script("benchmarks/fmnist_study.py")


def test_eval_settings():
    s = study()
    assert s.parse_eval("report") == {}
    assert s.parse_eval("dpmpp_2m:50") == {"sampler": "dpmpp_2m", "steps": 50}
    assert s.parse_eval("ddim:25:1.5") == {"sampler": "ddim", "steps": 25, "guidance": 1.5}
    with pytest.raises(SystemExit, match="SAMPLER:STEPS"):
        s.parse_eval("ddim")


def test_table_averages_seeds_and_shows_their_spread(tmp_path):
    row = dict(name="A", eval="report", sampler="dpmpp_2m", sample_steps=50, guidance=1.0, steps=2900,
               fcd=50.0, class_kl=0.08, brightness_w1=0.01, brightness_std=0.24)
    rows = [row, dict(row, fcd=60.0, brightness_w1=0.03, steps=3000), dict(row, eval="ddim:50", sampler="ddim", fcd=55.0)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = study().table(path).splitlines()
    assert lines[2] == "| A | dpmpp_2m 50 (report) | 2 | 2,950 (2,900..3,000) | 55.0 (50.0..60.0) | 0.080 (0.080..0.080) | " \
                       "0.020 (0.010..0.030) | 0.240 (0.240..0.240) |"
    assert lines[3].startswith("| A | ddim 50 | 1 | 2,900 | 55.0 |")
