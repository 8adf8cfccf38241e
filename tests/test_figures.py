"""One validation figure wherever it is shown: the training log and status agree, the protocol is named,
accuracy is a percentage (hpcrnn/run/figures.py)."""

from __future__ import annotations

import re

from hpcrnn.cluster.run_status import collect_status
from hpcrnn.cluster.status import format_status
from hpcrnn.fsutil import read_jsonl
from hpcrnn.run.figures import figures_line, latest_validation, own_protocol, validation_line
from hpcrnn.train.loop import run_train
from tests.helpers import prepared


def test_log_and_status_show_the_same_validation(tmp_path, tiny_corpus, capsys):
    _, cfg = prepared(tmp_path, tiny_corpus)  # windows mode: its own protocol, then the standard one
    capsys.readouterr()
    assert run_train(cfg).status == "done"
    log = capsys.readouterr().out
    periodic = re.findall(
        r"step (\d+) val loss \S+ ppl (\d+\.\d\d) acc (\d+\.\d)% top5 \S+% \((\w+) protocol, ([^)]*)\)", log
    )
    assert periodic, log
    step, ppl, acc, protocol, how = periodic[-1]
    assert protocol == "windows" and how == "estimate on 2 batches"

    # the final line: every figure in percent, the run's own protocol and the standard one named
    done = next(line for line in log.splitlines() if "done at step" in line)
    assert re.search(r"val ppl \d+\.\d\d acc \d+\.\d%, test ppl \d+\.\d\d acc \d+\.\d%", done), done
    assert "(windows protocol)" in done and "(standard protocol)" in done and "acc 0." not in done

    s = collect_status(cfg)
    text = format_status(s)
    # status shows the same (newest, own-protocol) validation as the log, with its protocol and kind
    v = s["val_ppl"]
    assert f"{v['ppl']:.2f}" == f"{latest_validation(read_jsonl(cfg.metrics_path))['ppl']:.2f}"
    assert v["protocol"] == "windows"
    assert f"validation perplexity: {validation_line(v)}" in text
    # the final evaluation reads the whole split: the newest validation is the final one, not an estimate
    assert v["estimate"] is False and "full split" in text
    assert "final figures: " in text and figures_line(s["final"], "windows") in text
    assert f"{s['final']['val']['ppl']:.2f}" in done and f"{s['final']['test']['acc']:.1%}" in done


def test_the_standard_protocols_final_record_is_not_the_runs_validation():
    """A run in windows mode ends with a standard-protocol evaluation: status still shows its own."""
    metrics = [
        {"split": "val", "step": 10, "ppl": 50.0, "acc": 0.2, "protocol": "windows", "estimate": True},
        {"split": "val", "step": 20, "ppl": 40.0, "acc": 0.25, "protocol": "windows", "final": True},
        {"split": "val", "step": 20, "ppl": 30.0, "acc": 0.3, "protocol": "standard", "final": True},
        {"split": "test", "step": 20, "ppl": 42.0, "acc": 0.24, "protocol": "windows", "final": True},
        {"split": "test", "step": 20, "ppl": 31.0, "acc": 0.31, "protocol": "standard", "final": True},
    ]
    assert own_protocol(metrics) == "windows"
    v = latest_validation(metrics)
    assert (v["ppl"], v["estimate"], v["protocol"]) == (40.0, False, "windows")
    assert latest_validation(metrics[:1])["estimate"] is True
    line = validation_line(latest_validation(metrics[:1]))
    assert line == "50.00, acc 20.0% at step 10 (windows protocol, estimate on a subset of the split)"
    from hpcrnn.run.figures import final_figures

    assert figures_line(final_figures(metrics), "windows") == (
        "val ppl 40.00 acc 25.0%, test ppl 42.00 acc 24.0% (windows protocol); "
        "val ppl 30.00 acc 30.0%, test ppl 31.00 acc 31.0% (standard protocol)"
    )
    assert validation_line(None) == "not measured yet"
