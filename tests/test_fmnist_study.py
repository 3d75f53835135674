"""benchmarks/fmnist_study.py: its sampler settings and the study table's means and seed spreads."""

import json
from pathlib import Path

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
    lines = study().table(path).splitlines()[1:]  # after the data set's name
    assert lines[2] == "| A | dpmpp_2m 50 (report) | 2 | 2,950 (2,900..3,000) | 55.0 (50.0..60.0) | 0.080 (0.080..0.080) | " \
                       "0.020 (0.010..0.030) | 0.240 (0.240..0.240) |"
    assert lines[3].startswith("| A | ddim 50 | 1 | 2,900 | 55.0 |")


def test_table_gives_each_colour_set_its_own_table_with_saturation(tmp_path):
    grey = dict(name="A", eval="report", sampler="dpmpp_2m", sample_steps=25, guidance=1.0, steps=2900,
                fcd=9.0, class_kl=0.01, brightness_w1=0.01, brightness_std=0.24)
    colour = dict(grey, set="icons", fcd=80.0, brightness_std_data=0.3, saturation=0.12, saturation_data=0.135)
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (grey, colour, dict(colour, seed=1, saturation=0.14))))
    text = study().table(path)
    grey_part, colour_part = text.split("\n\n")
    assert grey_part.startswith("fashion-mnist:") and "saturation" not in grey_part
    assert colour_part.startswith("icons:") and "saturation (data 0.135)" in colour_part
    assert colour_part.splitlines()[-1].endswith("| 0.130 (0.120..0.140) |")
    assert study().score_command(Path("x.py"), "icons", Path("s.npz"))[-3:] == ["score", "icons", "s.npz"]
