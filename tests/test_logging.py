"""What a new user sees while a run goes: a progress bar (or batch-log lines) that tells the truth from the
first step, evaluation progress, metrics.csv, TensorBoard's hparams, config, samples and val curve, and
Weights & Biases (offline, no network)."""

import importlib.machinery
import re
import sys
import types

import pytest
import torch

from hpcrnn import progress as P
from hpcrnn.config import load_config
from hpcrnn.errors import ConfigError
from hpcrnn.fsutil import read_jsonl
from hpcrnn.train import loop
from hpcrnn.train import metrics as M
from hpcrnn.train import wandb_log as W
from hpcrnn.train.tensorboard import FOLDER, flatten, tags
from tests.helpers import prepared, run_python, stop_at, tiny_config

torch.set_num_threads(1)

SHORT = {"max_steps": 12}  # log points 5, 10, 12; checkpoints 5, 10, 12; validation at 10


# ------------------------------------------------------------------ the training bar and lines


def _bars(err: str) -> list[str]:
    return [b for b in err.split("\r") if b.startswith("[")]


def test_the_bar_shows_real_figures_from_the_first_step(tmp_path, tiny_corpus, capsys, monkeypatch):
    _, cfg = prepared(tmp_path, tiny_corpus, train={**SHORT, "progress": "bar"})
    capsys.readouterr()
    monkeypatch.setattr(M, "_BAR_EVERY_S", 0.0)  # every step draws
    assert loop.run_train(cfg).status == "done"
    bars = _bars(capsys.readouterr().err)
    assert [int(re.search(r"\] (\d+)/12 ", b).group(1)) for b in bars][:3] == [1, 2, 3], bars[:3]
    pattern = r"\] (\d+)/12 loss (\d+\.\d{3}) ([\d,]+) tok/s ([\d.,]+) it/s elapsed \d\d:\d\d:\d\d eta \d\d:\d\d:\d\d"
    for b in bars:
        m = re.search(pattern, b)
        assert m, b
        figures = [float(m.group(i).replace(",", "")) for i in (2, 3, 4)]
        assert all(x > 0 for x in figures), b
        assert "nan" not in b and "–" not in b


def test_a_batch_log_gets_one_line_every_log_every_steps(tmp_path, tiny_corpus, capsys):
    _, cfg = prepared(tmp_path, tiny_corpus, train={**SHORT, "progress": "lines"})
    capsys.readouterr()
    assert loop.run_train(cfg).status == "done"
    out = capsys.readouterr()
    lines = [ln for ln in out.out.splitlines() if ln.startswith("step ") and " tok/s " in ln]
    assert [int(ln.split()[1].split("/")[0]) for ln in lines] == [5, 10, 12], out.out
    for ln in lines:
        assert re.search(r"loss \d+\.\d{4} ppl [\d.]+ lr \S+ [\d,]+ tok/s [\d.,]+ it/s elapsed \S+ eta \S+$", ln), ln
        assert "nan" not in ln and " 0 tok/s" not in ln
    assert "\r" not in out.err


def test_the_running_loss_spans_the_same_steps_however_often_it_is_read(tmp_path):
    cfg = load_config(tiny_config(tmp_path, tmp_path / "none.txt"))
    every, sparse = M.Progress(cfg, 100, True), M.Progress(cfg, 100, True)
    every.note_loss(6.0, 1)
    assert every.last_loss == pytest.approx(6.0)  # the first read is the loss itself (debiased)
    for step in range(2, 51):
        every.note_loss(6.0 - step / 50, step)
        if step % 10 == 0:
            sparse.note_loss(6.0 - step / 50, step)
    assert 5.0 < every.last_loss < 5.7 and 5.0 < sparse.last_loss < 5.7
    assert every.last_loss == pytest.approx(sparse.last_loss, abs=0.2)
    every.note_loss(float("nan"), 51)  # the non-finite guard stops the run; the bar shows no nan
    assert every.last_loss == every.last_loss


def test_the_pace_is_over_the_recent_steps(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(M.time, "time", lambda: now[0])
    pace = M.Pace()
    assert pace.window() == (0.0, 0.0)  # not measured: the bar shows "–"
    for _ in range(3):
        now[0] += 2.0
        pace.tick(now[0] - 0.5, 100)  # each step 0.5 s and 100 tokens, 1.5 s between steps
    assert pace.window() == pytest.approx((200.0, 2.0))  # the steps' own time, not the time between them
    now[0] += M.WINDOW_S + 10  # a minute later, a slower step: the old ones leave the window
    pace.tick(now[0] - 1.0, 100)
    assert pace.window() == pytest.approx((100.0, 1.0))
    for _ in range(M.WINDOW_STEPS + 5):
        now[0] += 0.1
        pace.tick(now[0] - 0.1, 10)
    assert len(pace.recent) == M.WINDOW_STEPS and pace.window() == pytest.approx((100.0, 10.0))


# ------------------------------------------------------------------ progress of evaluation and of a Meter


def test_a_meter_bar_draws_the_first_and_the_last_item_at_once(monkeypatch, capsys):
    monkeypatch.setattr(P, "_BAR_EVERY_S", 3600.0)
    m = P.Meter("job", total=3, unit="recipes", mode="bar")
    m.update(1)
    m.update(2)  # within the redraw interval: not drawn
    m.update(3)
    m.finish()
    err = capsys.readouterr().err
    assert [b.split("] ")[1].split(",")[0] for b in _bars(err)] == ["job: 1/3 recipes (33%)", "job: 3/3 recipes (100%)"]
    assert P.clock(90061) == "25:01:01"  # hours past a day keep counting


@pytest.fixture
def trained(tmp_path, tiny_corpus):
    _, cfg = prepared(tmp_path, tiny_corpus, train={**SHORT, "progress": "lines"})
    assert loop.run_train(cfg).status == "done"
    return cfg


def test_evaluate_shows_a_bar_per_split_on_a_terminal_and_a_line_per_split_in_a_log(trained, capsys, monkeypatch):
    from hpcrnn.evaluate.command import run_evaluate

    capsys.readouterr()
    quiet = run_evaluate(trained)  # the API's and tests' call: no progress
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    logged = run_evaluate(trained, progress=True)
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert [ln.split(":")[1].strip() for ln in lines] == [
        "val windows",
        "val standard",
        "test windows",
        "test standard",
    ]
    assert all(re.search(r"[\d,]+ tokens scored in \d\d:\d\d:\d\d$", ln) for ln in lines), lines
    assert out.out == "" and logged["results"] == quiet["results"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run_evaluate(trained, progress=True, protocols=["documents"])
    bars = _bars(capsys.readouterr().err)
    assert bars and bars[0].split("] ")[1].startswith("hpcrnn.evaluate: val documents: ")
    assert any("(100%)" in b and "tokens/s" in b for b in bars), bars


# ------------------------------------------------------------------ metrics.csv


def _csv(path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_csv_follows_metrics_jsonl_at_each_checkpoint_and_the_end(tmp_path, tiny_corpus):
    _, cfg = prepared(tmp_path, tiny_corpus, train=SHORT)
    csv_path = cfg.metrics_path.with_name("metrics.csv")
    seen = {}

    def hook(step, flag):
        if step in (6, 11):  # just after the checkpoints of steps 5 and 10
            seen[step] = [r["step"] for r in _csv(csv_path) if r["split"] == "train"]
        stop_at(11)(step, flag)

    assert loop.run_train(cfg, hook).status == "requeue"
    assert seen == {6: ["5"], 11: ["5", "10"]}
    assert loop.run_train(cfg).status == "done"
    recs = read_jsonl(cfg.metrics_path)
    rows = _csv(csv_path)
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header == list(dict.fromkeys(k for r in recs for k in r))  # the union of the keys, first seen first
    assert len(rows) == len(recs) and any(r.get("event") == "stop" for r in rows)
    for r, rec in zip(rows, recs):
        for k, v in rec.items():
            if v is None:
                assert r[k] == ""
            elif isinstance(v, bool):
                assert r[k] == ("true" if v else "false")
            elif isinstance(v, (int, float)):
                assert float(r[k]) == pytest.approx(v, rel=1e-12)
            else:
                assert r[k] == str(v)
    assert not list(csv_path.parent.glob(".metrics.csv.*"))  # written atomically: no temporary left


# ------------------------------------------------------------------ TensorBoard


def test_tags_leave_out_final_epoch_and_lr_and_continue_the_val_curve():
    rec = dict(step=12, epoch=0, split="val", final=True, protocol="windows", loss=4.0, ppl=54.6, lr=0.01, time=1.0)
    got = tags(rec, "windows")
    assert got == {
        "final/val/windows/loss": 4.0,
        "final/val/windows/ppl": 54.6,
        "val/loss": 4.0,
        "val/ppl": 54.6,
        "val/epoch": 0.0,
        "val/lr": 0.01,
    }
    assert set(tags({**rec, "protocol": "standard"}, "windows")) == {
        "final/val/standard/loss",
        "final/val/standard/ppl",
    }
    assert set(tags({**rec, "split": "test"}, "windows")) == {"final/test/windows/loss", "final/test/windows/ppl"}
    assert flatten({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": "x"}) == {"a.b": 1, "a.d": "[1, 2]", "e": "x"}


def test_tensorboard_has_hparams_config_samples_and_the_val_curve_to_the_end(tmp_path, tiny_corpus, capsys):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, cfg = prepared(tmp_path, tiny_corpus, train={**SHORT, "tensorboard": True, "progress": "lines"})
    capsys.readouterr()
    assert loop.run_train(cfg).status == "done"
    out = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    folder = cfg.run_dir / FOLDER
    assert out[1] == f"hpcrnn.train: TensorBoard events in {folder}/: tensorboard --logdir {folder}", out[:2]
    acc = ea.EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("val/loss")] == [10, 12]
    final_val = next(r for r in read_jsonl(cfg.metrics_path) if r.get("final") and r["split"] == "val")
    assert acc.Scalars("val/loss")[-1].value == pytest.approx(final_val["loss"], rel=1e-6)
    assert not [t for t in scalars if t.startswith("final/") and t.endswith(("/epoch", "/lr"))], scalars
    text = {t: [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(t)] for t in acc.Tags()["tensors"]}
    (config,) = [v for t, v in text.items() if t.startswith("config")]
    assert config[0][0] == 0 and "    train:" in config[0][1] and "tensorboard: true" in config[0][1]
    (samples,) = [v for t, v in text.items() if t.startswith("samples")]
    assert [s for s, _ in samples] == [5, 10, 12] and all(len(t) > 20 for _, t in samples)
    content = acc.PluginTagToContent("hparams")
    data = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()]
    (start,) = [d for d in data if d.HasField("session_start_info")]
    hp = start.session_start_info.hparams
    assert hp["train.lr"].number_value == pytest.approx(0.01) and hp["model.cell"].string_value == "lstm"
    metrics = {m.name.tag for d in data for m in d.experiment.metric_infos}
    assert {"final/val/windows/ppl", "final/test/standard/acc"} <= metrics <= set(scalars)


def test_samples_leave_the_training_rng_alone(tmp_path, tiny_corpus):
    """A sampled checkpoint must not change what a resumed run trains: the samples use their own generator."""
    _, cfg = prepared(tmp_path, tiny_corpus, train=SHORT)
    from hpcrnn.data.corpus import open_corpus
    from hpcrnn.model.rnn import build_model

    corpus = open_corpus(cfg.h5_path)
    model = build_model(cfg.model, len(corpus.vocab))
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a = M.sample_recipes(model, corpus, torch.device("cpu"), seed=3)
    assert torch.equal(torch.random.get_rng_state(), before) and model.training
    assert a == M.sample_recipes(model, corpus, torch.device("cpu"), seed=3) and len(a) == M.SAMPLES


# ------------------------------------------------------------------ Weights & Biases


class _FakeRun:
    def __init__(self, **kw):
        self.kw, self.logged, self.metrics, self.summary, self.finished = kw, [], [], {}, False
        self.url, self.dir = None, str(kw["dir"]) + "/wandb/offline-run-x/files"

    def define_metric(self, name, **kw):
        self.metrics.append((name, kw))

    def log(self, data):
        self.logged.append(dict(data))

    def finish(self):
        self.finished = True


@pytest.fixture
def wandb_env(monkeypatch):
    """The process environment as it was after the test (an offline run sets WANDB_MODE in it)."""
    for var in ("WANDB_MODE", "WANDB_ERROR_REPORTING", "WANDB_SILENT", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake_wandb(monkeypatch, wandb_env):
    mod = types.ModuleType("wandb")
    mod.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    mod.runs = []

    def init(**kw):
        mod.runs.append(_FakeRun(**kw))
        return mod.runs[-1]

    mod.init = init
    mod.Settings = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return mod


def test_wandb_gets_the_records_tensorboard_gets(tmp_path, tiny_corpus, fake_wandb, capsys):
    _, cfg = prepared(tmp_path, tiny_corpus, train={**SHORT, "progress": "lines", "wandb": {"project": "recipes"}})
    capsys.readouterr()
    assert loop.run_train(cfg, stop_at(7)).status == "requeue"
    assert loop.run_train(cfg).status == "done"
    first, second = fake_wandb.runs
    kw = second.kw
    assert kw["project"] == "recipes" and kw["mode"] == "offline" and kw["dir"] == str(cfg.run_dir)
    assert re.fullmatch(r"[0-9a-f]{12}", kw["id"]) and kw["resume"] == "allow"
    assert kw["id"] == first.kw["id"] == (cfg.run_dir / "wandb" / W.ID_FILE).read_text().strip()  # continued
    assert kw["config"] == cfg.to_dict() and kw["settings"]["console"] == "off"
    assert ("*", {"step_metric": W.STEP}) in second.metrics and first.finished and second.finished
    want = [{**tags(r, "windows"), W.STEP: r["step"]} for r in read_jsonl(cfg.metrics_path) if tags(r)]
    assert first.logged + second.logged == want
    assert second.summary["final_step"] == 12 and "final/test/standard/ppl" in second.logged[-1]
    out = capsys.readouterr().out
    assert f"W&B offline run in {cfg.run_dir / 'wandb' / 'offline-run-x'}: upload it with: wandb sync" in out


def test_wandb_missing_package_is_one_line_before_training(tmp_path, tiny_corpus, monkeypatch, wandb_env):
    _, cfg = prepared(tmp_path, tiny_corpus, train={**SHORT, "wandb": {"project": "recipes"}})
    monkeypatch.setitem(sys.modules, "wandb", None)  # as without the package
    with pytest.raises(ConfigError, match=r"train.wandb.project: 'recipes' needs the wandb package: pip install"):
        loop.run_train(cfg)
    assert not cfg.metrics_path.exists() and not cfg.checkpoint_dir.exists()
    cfg.train.wandb.mode = "disabled"  # off: the package is not needed
    assert loop.run_train(cfg).status == "done" and not (cfg.run_dir / "wandb").exists()


@pytest.mark.slow
def test_wandb_missing_package_exit_status(tmp_path, tiny_corpus):
    p = tiny_config(tmp_path, tiny_corpus, train={"wandb": {"project": "recipes"}})
    code = (
        "import sys; sys.modules['wandb'] = None\n"
        "from hpcrnn.preprocess import main as pre; from hpcrnn.train.loop import main\n"
        f"assert pre([{str(p)!r}]) == 0; sys.exit(main([{str(p)!r}]))"
    )
    r = run_python("-c", code)
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "pip install 'hpcrnn[wandb]'" in err[0], err


def test_wandb_that_cannot_start_is_a_warning(tmp_path, tiny_corpus, fake_wandb, capsys):
    def refuse(**kw):
        raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login")

    fake_wandb.init = refuse
    _, cfg = prepared(tmp_path, tiny_corpus, train={**SHORT, "wandb": {"project": "recipes", "mode": "online"}})
    assert loop.run_train(cfg).status == "done"
    assert "hpcrnn.train: warning: no W&B run: api_key not configured (no-tty)\n" in capsys.readouterr().out


def test_wandb_offline_for_real_without_a_network(tmp_path, tiny_corpus, wandb_env):
    pytest.importorskip("wandb")
    _, cfg = prepared(tmp_path, tiny_corpus, train={**SHORT, "wandb": {"project": "recipes", "mode": "offline"}})
    assert loop.run_train(cfg).status == "done"
    runs = list((cfg.run_dir / "wandb").glob("offline-run-*"))
    run_id = (cfg.run_dir / "wandb" / W.ID_FILE).read_text().strip()
    assert len(runs) == 1, runs
    data = (runs[0] / f"run-{run_id}.wandb").read_bytes()  # W&B's own record log: its strings are plain
    for tag in (b"train/loss", b"val/loss", b"final/test/standard/ppl", W.STEP.encode(), b"max_steps"):
        assert tag in data, tag
    assert b"final/val/windows/lr" not in data
