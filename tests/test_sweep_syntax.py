"""A sweep's value syntax (hpcrnn/cluster/sweep_dir.py): ``range(start,stop[,step])`` beside ``v1,v2``, and
random search (``--random N [--seed S]`` with ``uniform``, ``loguniform``, ``choice``): reproducible draws
within their bounds, the drawn value exactly in the run's config, safe distinct run names, one-line errors."""

from __future__ import annotations

import math
import re

import pytest
import yaml

from hpcrnn.cluster import sweep_dir as SD
from hpcrnn.errors import ConfigError
from tests.helpers import run_module, tiny_config

SAFE_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


def swept(*items: str, random_search: bool = False) -> dict:
    return SD.parse_args(list(items), random_search)[1]


# ------------------------------------------------------------------------------------------ range


def test_range_is_hydras_stop_excluded_ints_stay_ints():
    assert swept("model.hidden=range(8,40,8)") == {"model.hidden": ["8", "16", "24", "32"]}
    assert swept("train.seed=range(0,3)") == {"train.seed": ["0", "1", "2"]}
    assert swept("train.seed=range(3, 0, -1)") == {"train.seed": ["3", "2", "1"]}
    # a decimal step is exact: 0.3, not 0.30000000000000004
    assert swept("model.dropout=range(0,0.5,0.1)") == {"model.dropout": ["0.0", "0.1", "0.2", "0.3", "0.4"]}
    assert swept("train.lr=range(1e-3,4e-3,1e-3)") == {"train.lr": ["0.001", "0.002", "0.003"]}


def test_range_runs_hold_the_values(tmp_path, tiny_corpus):
    sw = SD.expand(tiny_config(tmp_path, tiny_corpus), ["model.hidden=range(8,24,8)", "model.dropout=0.1,0.2"])
    assert [(r.cfg.model.hidden, r.cfg.model.dropout) for r in sw.runs] == [(8, 0.1), (8, 0.2), (16, 0.1), (16, 0.2)]
    assert sw.specs == {"model.hidden": "range(8,24,8)", "model.dropout": "0.1,0.2"}


def test_choice_on_a_grid_is_the_list():
    assert swept("model.cell=choice(lstm,gru)") == swept("model.cell=lstm,gru") == {"model.cell": ["lstm", "gru"]}


@pytest.mark.parametrize(
    "item, random_search, message",
    [
        ("train.lr=uniform(1)", True, r"train\.lr=uniform\(1\): uniform takes two numbers"),
        ("train.lr=uniform(0.5,0.1)", True, r"train\.lr=uniform\(0\.5,0\.1\): uniform needs low < high"),
        ("train.lr=loguniform(0,1)", True, r"train\.lr=loguniform\(0,1\): loguniform needs 0 < low < high"),
        ("train.lr=uniform(a,1)", True, r"train\.lr=uniform\(a,1\): expected numbers"),
        ("train.lr=uniform(0,inf)", True, r"train\.lr=uniform\(0,inf\): bounds must be finite"),
        (
            "train.lr=uniform(0.1,0.5)",
            False,
            r"train\.lr=uniform\(0\.1,0\.5\): uniform\(\) draws at random: add --random N",
        ),
        ("model.hidden=range(1,0)", False, r"model\.hidden=range\(1,0\): gives no values"),
        ("model.hidden=range(1,5,0)", False, r"model\.hidden=range\(1,5,0\): the step is 0"),
        ("model.hidden=range(1)", False, r"model\.hidden=range\(1\): range takes start, stop\[, step\]"),
        ("model.hidden=range(0,100000)", False, r"model\.hidden=range\(0,100000\): gives 100000 values"),
        ("model.hidden=normal(0,1)", True, r"model\.hidden=normal\(0,1\): normal\(\) is not a sweep function"),
        ("model.cell=choice()", False, r"model\.cell=choice\(\): choice takes one or more values"),
        ("model.cell=choice(lstm,lstm)", True, r"model\.cell: value 'lstm' listed twice"),
        ("paths.scratch=choice(/a,/b)", True, r"paths\.scratch cannot be swept"),
    ],
)
def test_bad_syntax_is_one_line_naming_the_key_and_text(item, random_search, message):
    with pytest.raises(ConfigError, match=message) as e:
        SD.parse_args([item], random_search)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ random search


def test_random_draws_are_seeded_reproducible_and_extend_with_n():
    keys = swept("train.lr=loguniform(1e-4,1e-2)", "model.dropout=uniform(0.1,0.5)", random_search=True)
    a, b = SD.draw(keys, 6, seed=3), SD.draw(keys, 6, seed=3)
    assert a == b and len({tuple(x.values()) for x in a}) == 6
    assert SD.draw(keys, 6, seed=4) != a
    assert SD.draw(keys, 9, seed=3)[:6] == a  # more runs of the same seed: the same first ones


def test_distributions_stay_in_bounds_and_loguniform_is_uniform_in_log_space():
    keys = swept(
        "a.x=uniform(0.1,0.5)", "a.y=loguniform(1e-4,1)", "a.z=choice(128,256,512)", "a.w=2,4", random_search=True
    )
    runs = SD.draw(keys, 2000, seed=0)
    xs, ys = [float(r["a.x"]) for r in runs], [float(r["a.y"]) for r in runs]
    assert all(0.1 <= x <= 0.5 for x in xs) and all(1e-4 <= y <= 1 for y in ys)
    assert {r["a.z"] for r in runs} == {"128", "256", "512"} and {r["a.w"] for r in runs} == {"2", "4"}
    # log-uniform: half the draws below the geometric middle 1e-2 (a uniform draw would put 1% there), and
    # each decade about a quarter
    below = sum(y < 1e-2 for y in ys) / len(ys)
    assert 0.45 < below < 0.55
    for lo in (-4, -3, -2, -1):
        share = sum(10**lo <= y < 10 ** (lo + 1) for y in ys) / len(ys)
        assert 0.2 < share < 0.3, (lo, share)
    # uniform: the middle of the interval gets half of it
    assert 0.45 < sum(x < 0.3 for x in xs) / len(xs) < 0.55


def test_lists_under_random_are_drawn_without_repeats_and_capped():
    keys = swept("model.hidden=8,16,32", "model.cell=lstm,gru", random_search=True)
    runs = SD.draw(keys, 6, seed=1)
    assert sorted(tuple(r.values()) for r in runs) == sorted(tuple(r.values()) for r in SD.grid(keys))
    assert SD.draw(keys, 4, seed=1) == runs[:4]
    with pytest.raises(ConfigError, match=r"--random 7: the lists give only 6 distinct runs"):
        SD.draw(keys, 7, seed=1)
    with pytest.raises(ConfigError, match=r"--random 0"):
        SD.draw(keys, 0)


def test_number_text_reads_back_exactly():
    for x in (1e-05, 0.1, 1 / 3, 2.5e-7, 123456.789, 1e22):
        text = SD.number_text(x)
        assert yaml.safe_load(text) == x and isinstance(yaml.safe_load(text), float), text
    assert SD.number_text(3) == "3"


def test_random_sweep_runs_hold_exactly_the_drawn_values(tmp_path, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_corpus)
    items = ["train.lr=loguniform(1e-4,1e-2)", "model.dropout=uniform(0.1,0.5)", "model.hidden=choice(8,16,32)"]
    sw = SD.expand(cfg, items, random_runs=5, seed=7)
    assert len(sw.runs) == 5 and sw.random == {"runs": 5, "seed": 7}
    names = [r.name for r in sw.runs]
    assert len(set(names)) == 5 and all(SAFE_NAME.fullmatch(n) and len(n) <= 200 for n in names)
    for r in sw.runs:
        assert r.cfg.train.lr == float(r.values["train.lr"]) and 1e-4 <= r.cfg.train.lr <= 1e-2
        assert r.cfg.model.dropout == float(r.values["model.dropout"])
        assert r.cfg.model.hidden in (8, 16, 32) and r.cfg.run_dir.parent == sw.dir
        assert r.made_by == [f"{k}={r.values[k]}" for k in ("train.lr", "model.dropout", "model.hidden")]
    again = SD.expand(cfg, items, random_runs=5, seed=7)
    assert [r.values for r in again.runs] == [r.values for r in sw.runs]
    assert list(sw.keys) == ["train.lr", "model.dropout", "model.hidden"]
    SD.write_sweep_file(sw)
    raw = SD.read_sweep_file(sw.dir)
    assert raw["random"] == {"runs": 5, "seed": 7} and raw["specs"]["train.lr"] == "loguniform(1e-4,1e-2)"


def test_random_from_the_command_line_is_the_same_twice(tmp_path, tiny_corpus):
    cfg = str(tiny_config(tmp_path, tiny_corpus))
    args = ["hpcrnn.sweep", cfg, "--random", "3", "train.lr=loguniform(1e-4,1e-2)", "--seed", "5", "--print-config"]
    one, two = run_module(*args), run_module(*args)
    assert one.returncode == 0, one.stderr
    assert one.stdout == two.stdout
    lrs = [d["train"]["lr"] for d in yaml.safe_load_all(one.stdout) if d]
    assert len(set(lrs)) == 3 and all(1e-4 <= x <= 1e-2 and math.isfinite(x) for x in lrs)
    bad = run_module("hpcrnn.sweep", cfg, "model.hidden=8,16", "--seed", "1", "--print-config")
    assert bad.returncode == 2 and "--seed: seeds the draws of --random; give --random N too" in bad.stderr
