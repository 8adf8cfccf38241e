"""python -m hpcrnn.plot: the curves of runs and of a sweep's runs as one PNG a user would put in a report
(what each line means readable from its style, plain ticks, the title, the legend clear of the panels);
one-line errors."""

import builtins
import dataclasses
import json
import re

import matplotlib
import pytest
import yaml

from hpcrnn import plot
from hpcrnn.cluster.run_status import collect_status
from hpcrnn.cluster.sweep_table import run_row
from hpcrnn.config import load_config, save_resolved
from tests.helpers import prepared, tiny_config

matplotlib.use("Agg")
PLAIN = re.compile(r"^-?\d+(\.\d+)?%?$")  # 300, 2000, 1.5, 25% (no 10^k, no 1e4, no mathtext)


def _records(steps: list[int], step_s: float, own: str, done: bool, pause: float, estimate) -> list[dict]:
    """metrics.jsonl as training writes it: a train record and a periodic validation (``estimate``: as
    marked, None: written before the mark) at each step (every ``step_s`` seconds), a requeue, then
    ``pause`` seconds later, for a finished run, the final val and test in the run's own protocol and then
    in the standard one."""
    recs, t = [], 1000.0
    for i, s in enumerate(steps):
        t += step_s
        loss = 6.0 - 0.4 * i
        recs.append({"step": s, "split": "train", "loss": loss, "ppl": 2.718**loss, "acc": 0.1 + 0.02 * i, "time": t})
        val = {"step": s, "split": "val", "protocol": own, "loss": loss + 0.1, "ppl": 2.718 ** (loss + 0.1)}
        recs.append({**val, "acc": 0.09 + 0.02 * i, "time": t + 1})
        if estimate is not None:
            recs[-1]["estimate"] = estimate
    recs.append({"event": "requeue", "reason": "timeout", "time": t + 2})
    finals = [(own, 150.0)] + ([("standard", 140.0)] if own != "standard" else [])
    for split in ("val", "test") if done else ():
        for protocol, ppl in finals:
            rec = {"step": steps[-1], "split": split, "protocol": protocol, "final": True, "loss": 5.0}
            recs.append({**rec, "ppl": ppl + (split == "test"), "acc": 0.25, "time": t + 3 + pause})
    return recs


def make_run(root, corpus, name, *, steps=(100, 200, 300), step_s=10.0, done=True, pause=0.0, marked=True, **train):
    """A run directory as training leaves it (its resolved config and a hand-written metrics.jsonl);
    ``marked``: False for records written before validations said whether they were estimates."""
    cfg = load_config(tiny_config(root / name, corpus, run={"name": name}, train=train))
    save_resolved(cfg)
    with open(cfg.metrics_path, "w") as f:
        estimate = cfg.train.eval_batches > 0 if marked else None
        for r in _records(list(steps), step_s, "windows", done, pause, estimate):
            f.write(json.dumps(r) + "\n")
    return cfg.run_dir


def make_sweep(root, corpus, names, *, launched=(), empty=()):
    """A sweep directory whose sweep.yaml names ``names`` (run dirs elsewhere: only runs[].run_dir counts),
    plus runs launched without metrics yet and runs not launched at all."""
    runs = [
        {"name": n, "values": {"train.lr": str(i)}, "run_dir": str(make_run(root, corpus, n))}
        for i, n in enumerate(names)
    ]
    for n in launched:
        cfg = load_config(tiny_config(root / n, corpus, run={"name": n}))
        save_resolved(cfg)
        runs.append({"name": n, "values": {}, "run_dir": str(cfg.run_dir)})
    runs += [{"name": n, "values": {}, "run_dir": str(root / "nowhere" / n)} for n in empty]
    sweep = root / "lr-sweep"
    sweep.mkdir()
    raw = {"config": "configs/tiny.yaml", "name": "lr", "overrides": [], "keys": {"train.lr": ["0", "1"]}, "runs": runs}
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(raw))
    return sweep


def lines(fig, kind=None):
    """{gid: Line2D} of the figure's run lines (``run|kind``), in the first panel (loss against step)."""
    ax = fig.axes[0]
    return {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid() and (kind is None or ln.get_gid().endswith(kind))}


def test_a_sweep_dir_draws_every_run_that_has_metrics(tmp_path, tiny_corpus, capsys):
    sweep = make_sweep(tmp_path, tiny_corpus, ["a", "b", "c"], launched=["d", "f"], empty=["e"])
    broken = tmp_path / "f" / "scratch" / "f" / "config.yaml"
    broken.write_text(broken.read_text().replace("hidden: 16", "hidden: many"))
    drawing = plot.collect([str(sweep)])
    assert [r.name for r in drawing.runs] == ["a", "b", "c"] and drawing.out == sweep / "curves.png"
    d, f, e = drawing.waiting
    assert (d, e) == ("d", "e (not launched)") and f.startswith(f"f (unreadable: {broken}") and "model.hidden" in f
    fig = plot.figure(drawing.runs, drawing.title)
    for ax in fig.axes:
        drawn = {ln.get_gid().split("|")[0] for ln in ax.get_lines() if ln.get_gid()}
        assert drawn == {"a", "b", "c"}
    assert plot.main([str(sweep)]) == 0
    png = sweep / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "d" in err and "e (not launched)" in err


def test_a_sweep_and_a_run_together_are_expanded_in_order(tmp_path, tiny_corpus):
    sweep = make_sweep(tmp_path, tiny_corpus, ["a", "b"])
    other = make_run(tmp_path, tiny_corpus, "z")
    drawing = plot.collect([str(other), str(sweep)])
    assert [r.name for r in drawing.runs] == ["z", "a", "b"] and drawing.out == other / "curves.png"


def test_a_sweep_without_any_metrics_is_one_line_error(tmp_path, tiny_corpus, capsys):
    sweep = make_sweep(tmp_path, tiny_corpus, [], launched=["d"], empty=["e"])
    assert plot.main([str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(sweep) in err and "no run of the sweep has metrics" in err


def test_print_config_of_a_sweep_prints_each_launched_run(tmp_path, tiny_corpus, capsys):
    sweep = make_sweep(tmp_path, tiny_corpus, ["a", "b"], empty=["e"])
    assert plot.main([str(sweep), "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert [ln for ln in out.splitlines() if ln.startswith("# run ")] == [
        f"# run a: {tmp_path / 'a' / 'scratch' / 'a'}",
        f"# run b: {tmp_path / 'b' / 'scratch' / 'b'}",
    ]
    assert "e" in err and not (sweep / "curves.png").exists()


@pytest.mark.parametrize(
    "seconds, unit", [(0, "s"), (59, "s"), (119.9, "s"), (120, "min"), (5400, "min"), (7200, "h"), (90000, "h")]
)
def test_the_wall_time_unit_fits_the_longest_run(seconds, unit):
    assert plot.time_unit(seconds)[0] == unit
    assert plot.time_unit(seconds)[1] == {"s": 1, "min": 60, "h": 3600}[unit]


def test_the_wall_time_axis_is_labelled_in_the_chosen_unit(tmp_path, tiny_corpus):
    short = plot.run_curves(str(make_run(tmp_path, tiny_corpus, "short", step_s=10.0)))
    long = plot.run_curves(str(make_run(tmp_path, tiny_corpus, "long", steps=range(1, 7), step_s=1700.0)))
    assert plot.figure([short], "t").axes[1].get_xlabel() == "training wall time (s)"
    fig = plot.figure([short, long], "t")
    assert fig.axes[1].get_xlabel() == "training wall time (h)"
    train = [ln for ln in fig.axes[1].get_lines() if ln.get_gid() == "long|train"][0]
    assert list(train.get_xdata()) == pytest.approx([i * 1701 / 3600 - i / 3600 for i in range(6)])


def test_a_requeue_wait_is_not_training_time(tmp_path, tiny_corpus):
    run = plot.run_curves(str(make_run(tmp_path, tiny_corpus, "a", pause=36000.0)))
    assert run.test["wall_s"] == run.val[-2]["wall_s"] == 21.0 and run.seconds == 21.0


def test_plain_numbers_on_every_tick():
    assert [plot.plain(v) for v in (300.0, 600, 2000.0, 1.5, 0.25, -0.0, 12000)] == [
        "300",
        "600",
        "2000",
        "1.5",
        "0.25",
        "0",
        "12000",
    ]
    assert [plot.percent(v) for v in (0.3, 0.275, 0.0)] == ["30%", "27.5%", "0%"]
    assert plot.log_ticks(80, 700) == [100, 200, 300, 500]
    assert plot.log_ticks(90, 4000) == [100, 200, 500, 1000, 2000]
    assert plot.log_ticks(150, 180) == [150, 160, 170, 180]  # too narrow for round log ticks: even ones
    assert plot.log_ticks(0.5, 2e7) == [1, 100, 10000, 1000000]  # many decades: every other power of ten


def test_the_drawn_ticks_are_plain(tmp_path, tiny_corpus):
    run = plot.run_curves(str(make_run(tmp_path, tiny_corpus, "a", steps=(5000, 10000, 20000, 40000))))
    fig = plot.figure([run], "t")
    fig.canvas.draw()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
            assert labels and all(PLAIN.match(s) for s in labels), labels
            assert axis.get_offset_text().get_text() == ""  # no "1e4" beside the axis
    ppl = fig.axes[2]
    assert ppl.get_yscale() == "log" and len([t for t in ppl.get_yticklabels() if t.get_text()]) >= 3
    assert all(t.get_text().endswith("%") for t in fig.axes[4].get_yticklabels() if t.get_text())


def test_subset_estimates_full_validations_and_the_test_figure_are_drawn_apart(tmp_path, tiny_corpus):
    run = plot.run_curves(str(make_run(tmp_path, tiny_corpus, "a", eval_batches=2)))
    assert [r["estimate"] for r in run.val] == [True, True, True, False]  # the periodic ones, then the final
    assert [r["protocol"] for r in run.val] == ["windows"] * 4  # not the final standard-protocol figure
    fig = plot.figure([run], "t")
    drawn = lines(fig)
    assert drawn["a|train"].get_linestyle() == "--"
    subset, full, test = drawn["a|val-subset"], drawn["a|val-full"], drawn["a|test"]
    assert subset.get_linestyle() == ":" and subset.get_markerfacecolor() == "none"
    assert full.get_linestyle() == "-" and full.get_markerfacecolor() != "none" and full.get_marker() == "o"
    assert test.get_marker() == "*" and list(test.get_xdata()) == [300]
    texts = [t.get_text() for t in fig.axes[2].texts]
    assert texts == ["test 151.00 (windows)"]
    assert [t.get_text() for t in fig.axes[4].texts] == ["test 25.0% (windows)"]


def test_a_whole_split_validation_is_drawn_solid(tmp_path, tiny_corpus):
    run = plot.run_curves(str(make_run(tmp_path, tiny_corpus, "a", eval_batches=0, done=False)))
    assert not any(r["estimate"] for r in run.val) and run.test is None
    drawn = lines(plot.figure([run], "t"))
    assert set(drawn) == {"a|train", "a|val-full"} and len(drawn["a|val-full"].get_xdata()) == 3


def test_records_from_before_the_estimate_mark_are_judged_by_the_config(tmp_path, tiny_corpus):
    old = plot.run_curves(str(make_run(tmp_path, tiny_corpus, "old", marked=False, eval_batches=2)))
    assert [r["estimate"] for r in old.val] == [True, True, True, False]
    whole = plot.run_curves(str(make_run(tmp_path, tiny_corpus, "whole", marked=False, eval_batches=0)))
    assert not any(r["estimate"] for r in whole.val)


def test_the_plot_shows_the_validation_status_and_the_sweep_table_show(tmp_path, tiny_corpus):
    for done in (False, True):
        run_dir = make_run(tmp_path / str(done), tiny_corpus, "a", done=done)
        run = plot.run_curves(str(run_dir))
        status = collect_status(load_config(run_dir))["val_ppl"]
        row = run_row({"name": "a", "run_dir": str(run_dir)}, [])
        assert run.val[-1]["ppl"] == status["ppl"] == row["val_ppl"] and run.latest == status
        assert run.protocol == status["protocol"] == row["protocol"] == "windows"
        assert run.val[-1]["estimate"] is status["estimate"] is (not done)
        assert f"val ppl {status['ppl']:.2f}" in run.label
        if done:
            assert run.test["ppl"] == row["test_ppl"] == 151.0  # its own protocol's, not the standard one


def test_the_title_names_the_runs_and_the_config(tmp_path, tiny_corpus):
    one = plot.collect([str(make_run(tmp_path, tiny_corpus, "lstm-a"))])
    assert one.title.splitlines()[0] == "lstm-a: LSTM 1x16, windows"
    assert "config" in one.title and str(one.runs[0].run_dir / "config.yaml") in one.title
    assert plot.figure(one.runs, one.title)._suptitle.get_text() == one.title
    sweep = make_sweep(tmp_path / "s", tiny_corpus, ["a", "b"])
    title = plot.collect([str(sweep)]).title
    assert title == "sweep lr: a, b\nconfig configs/tiny.yaml, swept train.lr"
    many = [plot.run_curves(str(make_run(tmp_path / "m", tiny_corpus, f"r{i}"))) for i in range(6)]
    assert plot.title_of(many, []).splitlines() == ["6 runs", "6 configs: LSTM 1x16, windows"]  # paths too long
    two = [dataclasses.replace(many[i], name=n, config=f"configs/{n}.yaml") for i, n in enumerate("xy")]
    assert plot.title_of(two, []) == "x, y\nconfigs configs/x.yaml, configs/y.yaml"


def test_the_legend_is_outside_every_panel_and_names_every_run(tmp_path, tiny_corpus):
    runs = [plot.run_curves(str(make_run(tmp_path, tiny_corpus, f"run{i}"))) for i in range(12)]
    fig = plot.figure(runs, "t")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_tightbbox(renderer)) for ax in fig.axes)
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:12] == [f"run{i}: val ppl 150.00, test ppl 151.00 (windows protocol)" for i in range(12)]
    assert "validation, estimate on a subset" in labels and "final test, whole split" in labels
    colours = {lines(fig)[f"run{i}|train"].get_color() for i in range(12)}
    assert len(colours) == 12  # one colour a run past tab10's ten
    assert not fig.axes[2].texts  # 12 runs: the test figures are in the legend, not over the curves
    assert fig.axes[2].get_ylabel() == "perplexity\n(validation: windows protocol)"


def test_a_run_without_metrics_is_one_line_error(tmp_path, tiny_corpus, capsys):
    cfg_path = tiny_config(tmp_path, tiny_corpus)
    assert plot.main([str(cfg_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "metrics.jsonl" in err


def test_missing_matplotlib_is_one_line_error(tmp_path, tiny_corpus, monkeypatch, capsys):
    run_dir = make_run(tmp_path, tiny_corpus, "a")
    real = builtins.__import__

    def no_matplotlib(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plot.main([str(run_dir), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install -e '.[plot]'" in err and not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_a_trained_run_is_drawn_from_its_own_records(tmp_path, tiny_corpus):
    from hpcrnn.train.loop import run_train

    _, cfg = prepared(tmp_path, tiny_corpus, run={"name": "a"}, train={"max_steps": 10, "eval_every": 5})
    run_train(cfg)
    run = plot.run_curves(str(cfg.run_dir))
    assert run.name == "a" and len(run.train) >= 2 and run.protocol == "windows"
    assert [r["estimate"] for r in run.val][-1] is False and any(r["estimate"] for r in run.val)  # eval_batches: 2
    assert run.latest == collect_status(cfg)["val_ppl"] and not run.latest["estimate"]
    assert run.test is not None and run.test["protocol"] == "windows"
    out = tmp_path / "figs" / "curves.png"
    assert plot.main([str(cfg.run_dir), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert plot.main([str(cfg.run_dir)]) == 0 and (cfg.run_dir / "curves.png").is_file()
