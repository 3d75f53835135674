"""benchmarks/quality.py: its --set parsing and the study table's means and seed spreads."""

import json
import math

import pytest
from scripts import load_script


def quality():
    return load_script("benchmarks/quality.py")


def test_sets_are_trainconfig_fields_with_python_values():
    q = quality()
    assert q.parse_sets(["lr=2e-3", "unet={'base_channels': 32}", "timesteps=logsnr_normal"]) == \
        {"lr": 2e-3, "unet": {"base_channels": 32}, "timesteps": "logsnr_normal"}
    with pytest.raises(SystemExit, match="not a TrainConfig field"):
        q.parse_sets(["learning_rate=1"])
    with pytest.raises(SystemExit, match="--seeds"):
        q.parse_sets(["seed=3"])
    # JSON's true is not Python's True: refused with the fix, not passed on as a string
    with pytest.raises(SystemExit, match="not a Python literal.*True/False/None"):
        q.parse_sets(['unet={"patch_size": 2, "flag": true}'])


def test_table_averages_seeds_and_shows_their_spread(tmp_path):
    rows = [dict(name="base", seed=s, sets={}, steps=st, images_per_s=100.0, sample_steps=25, guidance=1.0,
                 accuracy=acc, frechet=fr, brightness_w1=0.05, black_backgrounds=b, white_backgrounds=0.1)
            for s, st, acc, fr, b in ((0, 1000, 0.2, 20.0, 0.1), (1, 1100, 0.3, 18.0, 0.2))]
    rows.append(dict(rows[0], name="wide", sets={"unet": {"base_channels": 32}}, accuracy=None))
    rows.append(dict(rows[0], sampler="dpmpp_2m", accuracy=0.9))  # same run, another sampler: a row of its own
    rows.append(dict(rows[0], guidance=2.5, guidance_from=-3.0, accuracy=0.8))  # guided above log-SNR -3 only
    rows.append(dict(rows[0], guidance=2.5, guidance_from=-math.inf, accuracy=0.7))  # guided at every step
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = quality().table(path).splitlines()
    assert lines[2] == ("| base | recipe defaults | 2 | 1,050 (1,000..1,100) | 100 (100..100) | ddim 25 | 1 | 25.0% (20.0%..30.0%) | "
                        "19.00 (18.00..20.00) | 0.050 (0.050..0.050) | 15.0% (10.0%..20.0%) | 10.0% (10.0%..10.0%) |")
    assert lines[3].startswith("| wide | unet={'base_channels': 32} | 1 | 1,000 |") and "| n/a |" in lines[3]
    assert lines[4].startswith("| base | recipe defaults | 1 | 1,000 | 100 | dpmpp_2m 25 | 1 | 90.0% |")
    assert lines[5].startswith("| base | recipe defaults | 1 | 1,000 | 100 | ddim 25 | 2.5 (log-SNR >= -3) | 80.0% |")
    assert lines[6].startswith("| base | recipe defaults | 1 | 1,000 | 100 | ddim 25 | 2.5 | 70.0% |")
