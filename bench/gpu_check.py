"""Everything GPU-specific in one command, a few minutes on a CUDA GPU; a table of results with the card and date.

    python bench/gpu_check.py                     # on a CUDA GPU (a CPU-only machine: one line, exit 0)
    python bench/gpu_check.py --device cpu --quick   # the CPU-checkable parts, as CI runs them (tests/)
    python bench/gpu_check.py --only resume,speed-train [--corpus FILE] [--json FILE] [--keep]

Each check is a function of the device (and the options) that goes through hpcrnn's own code paths
(run_preprocess, run_train, run_generate, generate_batched) and bench_train's / bench_generate's loops,
imported, not copied:

- pipeline: configs/smoke.yaml end to end on the device: preprocess, train (train.precision auto), generate;
- precision: the same training in fp32 and in bf16 autocast (fp16 where the GPU lacks bf16): the losses
  are close, not equal (on the CPU the trainer trains in fp32 whatever train.precision says: equal there,
  and the CPU's bf16 autocast is compared through the trainer's loss function instead);
- resume: train.deterministic, stopped half-way and resumed, against the run without the stop: bitwise
  with torch's RNG dropout (embedding and output); with dropout between stacked cuDNN layers the GPU's
  limit is reported (cuDNN keeps that dropout's random state to itself: no checkpoint holds it);
- generate: recipes in fp32 and bf16 with the same seed, all present and non-empty; fp32 twice gives the
  same files; another batch size too (required on the CPU, reported on a GPU);
- process-group: a one-rank NCCL group (gloo on the CPU): the trainer's collectives, DDP, then run_train
  inside the group (its checkpoint collectives on the real backend);
- divergence: a loss made NaN at step 6 with train.nonfinite_check_every 5 (no host sync per step): the run
  raises DivergedError at the checkpoint of step 8 without writing it; step 4's checkpoint stays intact;
- speed-train: hpcrnn's training tokens/s over a hand-written (cuDNN on a GPU) loop of the same model, as
  bench/bench_train.py; in fp32 with the guard read every step and at the default, and in bf16;
- speed-generate: batched generation tokens/s over the lecture's sliding-window loop, as
  bench/bench_generate.py (fp32 and bf16).

Exit status 0 when no check failed, 1 otherwise; a check that does not apply says why (skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# before torch touches cuBLAS: deterministic cuBLAS needs it set when its first handle is made
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "recipes" / "recipes-5k.txt"


@dataclass
class Result:
    status: str  # pass | fail | skipped
    figures: str = ""
    reason: str = ""  # why it failed or was skipped
    seconds: float = 0.0


@dataclass
class Options:
    quick: bool
    corpus: Path
    work: Path
    log: Path | None = None
    trained: dict = field(default_factory=dict)  # device -> config of a trained run (pipeline's, reused)


# ------------------------------------------------------------------------------------------------ helpers


def run_config(device: str, opts: Options, name: str, *overrides: str):
    """configs/smoke.yaml on ``device`` in the work directory, all runs sharing one corpus.h5; ``--quick``
    shortens training and generation."""
    from hpcrnn.config import load_config  # noqa: PLC0415

    base = [
        f"run.name={name}",
        f"paths.scratch={opts.work / 'scratch'}",
        f"paths.jobs={opts.work / 'jobs'}",
        f"data.corpus={opts.corpus}",
        f"data.h5_path={opts.work / 'corpus.h5'}",
        f"train.device={device}",
        f"generate.device={device}",
        "train.progress=lines",
    ]
    if opts.quick:
        base += [
            "train.max_steps=12",
            "train.checkpoint_every=6",
            "train.eval_every=6",
            "train.eval_batches=2",
            "train.log_every=3",
            "generate.num_recipes=4",
            "generate.batch_size=4",
            "generate.max_tokens=80",
            "generate.quality_sample=5",
        ]
    cfg = load_config(ROOT / "configs" / "smoke.yaml", base + list(overrides))
    from hpcrnn.data.build import run_preprocess  # noqa: PLC0415

    run_preprocess(cfg)  # once: the other runs find corpus.h5 current
    return cfg


def train_losses(cfg) -> list[float]:
    from hpcrnn.fsutil import read_jsonl  # noqa: PLC0415

    return [r["loss"] for r in read_jsonl(cfg.metrics_path) if r.get("split") == "train"]


def stop_at(step: int):
    """A run_train hook: checkpoint and stop (as on SIGUSR2) at ``step``."""
    from hpcrnn.train.stopflag import STOP_REQUEUE  # noqa: PLC0415

    def hook(at: int, flag) -> None:
        if at >= step:
            flag.request(STOP_REQUEUE, "gpu_check")

    return hook


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bf16_ok(device: str) -> bool:
    """Does ``device`` multiply bf16 natively (hpcrnn's one rule: a CPU needs AMX or AVX512-BF16)?"""
    from hpcrnn.model.precision import native_bf16  # noqa: PLC0415

    return native_bf16(torch.device(device))


NO_CPU_BF16 = "this CPU has no bf16 kernels (no AMX or AVX512-BF16): CPU bf16 autocast not run"


def trained(device: str, opts: Options):
    """The config of a trained run on ``device``: the pipeline check's, else one trained now."""
    if device not in opts.trained:
        from hpcrnn.train.loop import run_train  # noqa: PLC0415

        cfg = run_config(device, opts, f"trained-{device}")
        run_train(cfg)
        opts.trained[device] = cfg
    return opts.trained[device]


# ------------------------------------------------------------------------------------------------- checks


def check_pipeline(device: str, opts: Options) -> Result:
    from hpcrnn.generate.job import run_generate  # noqa: PLC0415
    from hpcrnn.model.precision import resolve_precision  # noqa: PLC0415
    from hpcrnn.train.loop import run_train  # noqa: PLC0415

    cfg = run_config(device, opts, f"pipeline-{device}")
    precision = resolve_precision(cfg.train.precision, torch.device(device), "train")
    t = time.time()
    r = run_train(cfg)
    took = time.time() - t
    if r.status != "done" or r.step != cfg.train.max_steps:
        return Result("fail", reason=f"training ended {r.status} at step {r.step}")
    opts.trained[device] = cfg
    tps = [x["tokens_per_s"] for x in _records(cfg) if x.get("split") == "train"][1:] or [0.0]
    val = r.final.get("val", {}).get("ppl", float("nan"))
    g = run_generate(cfg)
    if not g.complete or g.written != cfg.generate.num_recipes:
        return Result("fail", reason=f"generation: {g.written} of {cfg.generate.num_recipes} recipes written")
    if not math.isfinite(val):
        return Result("fail", reason=f"validation perplexity {val}")
    return Result(
        "pass",
        f"train {r.step} steps in {took:.0f} s ({precision}, {statistics.median(tps):,.0f} tok/s), "
        f"val ppl {val:.1f}; {g.written} recipes at {g.tokens_per_s:,.0f} tok/s",
    )


def _records(cfg) -> list[dict]:
    from hpcrnn.fsutil import read_jsonl  # noqa: PLC0415

    return read_jsonl(cfg.metrics_path)


def max_rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b, strict=True))


def check_precision(device: str, opts: Options) -> Result:
    from hpcrnn.train.loop import run_train  # noqa: PLC0415

    low = "bf16" if device == "cpu" or bf16_ok(device) else "fp16"  # the CPU trainer: fp32 whatever is asked
    runs = {}
    for p in ("fp32", low):
        cfg = run_config(device, opts, f"precision-{p}-{device}", f"train.precision={p}", "train.deterministic=true")
        r = run_train(cfg)
        runs[p] = (train_losses(cfg), r.final["val"]["loss"])
    (a, va), (b, vb) = runs["fp32"], runs[low]
    if len(a) != len(b) or not a:
        return Result("fail", reason=f"train records differ: {len(a)} and {len(b)}")
    rel, vrel = max_rel_diff(a, b), abs(va - vb) / va
    figs = f"final train loss fp32 {a[-1]:.4f}, {low} {b[-1]:.4f}; max rel. diff {rel:.2%}, val {vrel:.2%}"
    if device != "cuda":  # the trainer trains in fp32 on the CPU (hpcrnn/train/precision.py): equal
        if a != b or va != vb:
            return Result("fail", figs, "the CPU trains in fp32 whatever train.precision says: losses must be equal")
        return _cpu_autocast(opts, f"trainer: {low} is fp32 on the CPU, losses equal")
    if a == b:
        return Result("fail", figs, f"{low} losses equal fp32's bitwise: autocast did not apply")
    if rel > 0.05 or vrel > 0.05:
        return Result("fail", figs, "more than 5% apart")
    return Result("pass", figs)


def _cpu_autocast(opts: Options, note: str) -> Result:
    """The trainer's loss (lm_loss) and autocast helper on the CPU: bf16 close to fp32, not equal."""
    from hpcrnn.data.batches import gather_windows  # noqa: PLC0415
    from hpcrnn.data.corpus import open_corpus  # noqa: PLC0415
    from hpcrnn.model.precision import autocast  # noqa: PLC0415
    from hpcrnn.model.rnn import build_model  # noqa: PLC0415
    from hpcrnn.train.loop import lm_loss  # noqa: PLC0415

    if not bf16_ok("cpu"):  # oneDNN has no bf16 LSTM there: the trainer's fp32 rule is what runs
        return Result("pass", note, NO_CPU_BF16)
    cfg = trained("cpu", opts) if "cpu" in opts.trained else run_config("cpu", opts, "autocast-cpu")
    corpus = open_corpus(cfg.h5_path)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(corpus.vocab))
    batch = gather_windows(corpus.tokens(), corpus.windows("train")[:16], cfg.data.window)
    with torch.no_grad():
        full = lm_loss(model, batch, "all")[0].item()
        with autocast("bf16", torch.device("cpu")):
            low, logits, _, _ = lm_loss(model, batch, "all")
    figs = f"{note}; lm_loss under CPU bf16 autocast {low.item():.5f} vs fp32 {full:.5f}"
    if logits.dtype != torch.bfloat16:
        return Result("skipped", figs, f"CPU autocast gave {logits.dtype} logits, not bf16")
    rel = abs(low.item() - full) / full
    if low.item() == full or rel > 0.02:
        return Result("fail", figs, f"bf16 vs fp32: relative difference {rel:.2%} (want > 0, <= 2%)")
    return Result("pass", figs)


def _model_diff(a, b) -> float:
    """The largest absolute difference between two checkpoints' weights."""
    from hpcrnn.train import checkpoint as ckpt  # noqa: PLC0415

    sa, sb = ckpt.load_model_state(a), ckpt.load_model_state(b)
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def _resume_case(device: str, opts: Options, name: str, *overrides: str) -> tuple[bool, str]:
    """(bitwise, what): a run stopped half-way and resumed against the same run without the stop."""
    from hpcrnn.train import checkpoint as ckpt  # noqa: PLC0415
    from hpcrnn.train.loop import run_train  # noqa: PLC0415

    extra = ("train.deterministic=true", *overrides)
    ref = run_config(device, opts, f"resume-{name}-ref-{device}", *extra)
    run_train(ref)
    cfg = run_config(device, opts, f"resume-{name}-{device}", *extra)
    half = cfg.train.max_steps // 2
    r = run_train(cfg, stop_at(half))
    if r.status != "requeue" or r.step != half:
        raise RuntimeError(f"{name}: the stop at step {half} ended {r.status} at {r.step}")
    run_train(cfg)
    a, b = ckpt.latest(ref.checkpoint_dir), ckpt.latest(cfg.checkpoint_dir)
    if (a.path / "model.pt").read_bytes() == (b.path / "model.pt").read_bytes():
        return True, f"{name}: bitwise"
    # not bitwise: is the GPU repeatable at all without a stop?
    again = run_config(device, opts, f"resume-{name}-ref2-{device}", *extra)
    run_train(again)
    c = ckpt.latest(again.checkpoint_dir)
    same = (a.path / "model.pt").read_bytes() == (c.path / "model.pt").read_bytes()
    return False, (
        f"{name}: max |dw| {_model_diff(a, b):.2g} after resume; two runs without a stop "
        + ("bitwise equal" if same else f"differ too (max |dw| {_model_diff(a, c):.2g})")
    )


def check_resume(device: str, opts: Options) -> Result:
    exact, what1 = _resume_case(device, opts, "1-layer", "model.dropout=0.2")
    stacked, what2 = _resume_case(device, opts, "2-layer", "model.dropout=0.2", "model.layers=2")
    figs = f"{what1}; {what2}"
    if not exact:
        return Result("fail", figs, "a resumed run must be bitwise equal with train.deterministic")
    if not stacked and device != "cuda":
        return Result("fail", figs, "the CPU resumes stacked layers with dropout bitwise")
    return Result("pass", figs + ("" if stacked else " (cuDNN's inter-layer dropout state: the documented limit)"))


def _recipes(out: Path, n: int) -> list[str]:
    from hpcrnn.run.generated import recipe_file_name  # noqa: PLC0415

    return [(out / recipe_file_name(i)).read_text(encoding="utf-8") for i in range(1, n + 1)]


def check_generate(device: str, opts: Options) -> Result:
    from hpcrnn.generate.job import run_generate  # noqa: PLC0415

    base = trained(device, opts)
    n = base.generate.num_recipes
    texts, figs = {}, []
    variants = [("fp32", "fp32", n), ("fp32-again", "fp32", n), ("fp32-batch", "fp32", max(1, n // 2))]
    if bf16_ok(device):
        variants.append(("bf16", "bf16", n))
    for name, precision, batch in variants:
        cfg = run_config(
            device,
            opts,
            base.run.name,
            f"generate.name=check-{name}",
            f"generate.precision={precision}",
            f"generate.batch_size={batch}",
            "generate.seed=7",
        )
        g = run_generate(cfg)
        if not g.complete or g.written != n:
            return Result("fail", reason=f"{name}: {g.written} of {n} recipes, complete {g.complete}")
        texts[name] = _recipes(g.out_dir, n)
        if not all(t.strip() for t in texts[name]):
            return Result("fail", reason=f"{name}: an empty recipe")
        summary = json.loads((g.out_dir / "summary.json").read_text())["generated"]
        if name in ("fp32", "bf16"):
            structure = summary.get("structure", 0)
            figs.append(f"{name}: {n} recipes, structure {structure:.0%}, {g.tokens_per_s:,.0f} tok/s")
    if texts["fp32"] != texts["fp32-again"]:
        return Result("fail", "; ".join(figs), "fp32 with the same seed and batch gave other recipes")
    other_batch = texts["fp32"] == texts["fp32-batch"]
    figs.append(f"same seed: fp32 repeats; batch {n} vs {max(1, n // 2)}: {'same' if other_batch else 'differ'}")
    if "bf16" in texts:
        figs.append(f"bf16 = fp32 in {sum(a == b for a, b in zip(texts['fp32'], texts['bf16']))}/{n} recipes")
    if not other_batch and device != "cuda":
        return Result("fail", "; ".join(figs), "on the CPU the batch size must not change the recipes")
    result = Result("pass", "; ".join(figs))
    if "bf16" not in texts:
        result.reason = f"bf16 not native on this {'GPU' if device == 'cuda' else 'CPU'}: fp32 only"
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_process_group(device: str, opts: Options) -> Result:
    import torch.distributed as dist  # noqa: PLC0415

    from hpcrnn.train import distributed as D  # noqa: PLC0415
    from hpcrnn.train.loop import run_train  # noqa: PLC0415

    backend = D.backend_for(device == "cuda")  # the trainer's own choice
    if not dist.is_available() or (device == "cuda" and not dist.is_nccl_available()):
        return Result("skipped", reason="torch has no nccl")
    cfg = run_config(device, opts, f"group-{device}", "train.max_steps=6", "train.checkpoint_every=3")
    done = []
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        dev = torch.device(device, 0) if device == "cuda" else torch.device("cpu")
        t = D.all_reduce(torch.ones(3, device=dev) * 2, op=dist.ReduceOp.MAX)
        assert t.tolist() == [2.0, 2.0, 2.0], t
        done.append(f"{backend} all_reduce")
        # the trainer's own collectives: CPU tensors (stop agreement, save status) and objects (RNG states)
        ok = D.all_reduce(torch.tensor([1.0, 0.0], dtype=torch.float64), op=dist.ReduceOp.MAX)
        assert ok.tolist() == [1.0, 0.0], ok
        done.append("CPU-tensor all_reduce")
        assert D.all_gather_object({"rank": 0}) == [{"rank": 0}]
        D.barrier()
        done.append("objects, barrier")
        model = torch.nn.LSTM(8, 8, batch_first=True).to(dev)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0] if device == "cuda" else None)
        ddp(torch.randn(2, 5, 8, device=dev))[0].sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        done.append("DDP backward")
        r = run_train(cfg)  # inside the group: its lock, checkpoint and stop collectives on this backend
        assert r.status == "done" and r.step == 6, r
        done.append("run_train in the group")
    except Exception as e:
        return Result("fail", ", ".join(done), f"after [{', '.join(done)}]: {type(e).__name__}: {_first_line(e)}")
    finally:
        if dist.is_initialized():  # run_train tears the group down itself
            dist.destroy_process_group()
    return Result("pass", f"one rank, {backend}: " + ", ".join(done))


def check_divergence(device: str, opts: Options) -> Result:
    from hpcrnn.errors import DivergedError  # noqa: PLC0415
    from hpcrnn.train import checkpoint as ckpt  # noqa: PLC0415
    from hpcrnn.train import loop  # noqa: PLC0415

    cfg = run_config(
        device,
        opts,
        f"divergence-{device}",
        "train.max_steps=12",
        "train.checkpoint_every=4",
        "train.eval_every=100",
        "train.nonfinite_check_every=5",
    )
    real, calls = loop.lm_loss, [0]

    def poisoned(model, batch, loss_mode, state=None):
        loss, logits, y, state = real(model, batch, loss_mode, state)
        if model.training:
            calls[0] += 1
            if calls[0] == 6:
                loss = loss * float("nan")
        return loss, logits, y, state

    loop.lm_loss = poisoned
    try:
        loop.run_train(cfg)
        return Result("fail", reason="a NaN loss at step 6 did not stop the run")
    except DivergedError as e:
        msg = _first_line(e)
    finally:
        loop.lm_loss = real
    steps = [c.step for c in ckpt.list_complete(cfg.checkpoint_dir)]
    good = ckpt.latest(cfg.checkpoint_dir)
    figs = f"NaN at step 6, guard read every 5: {msg.split(';')[0]}; checkpoints {steps}"
    if not re.search(r"at step 6 \(found at step 8", msg):
        return Result("fail", figs, "expected: found at step 8, before its checkpoint")
    if steps != [4] or ckpt.verify(good.path) is not None:
        return Result("fail", figs, "the checkpoint of step 4 alone must be there, intact")
    if not all(torch.isfinite(v).all() for v in ckpt.load_model_state(good).values()):
        return Result("fail", figs, "non-finite weights in the last good checkpoint")
    return Result("pass", figs)


def check_speed_train(device: str, opts: Options) -> Result:
    from bench.bench_train import hand_loop  # noqa: PLC0415
    from hpcrnn.data.corpus import open_corpus  # noqa: PLC0415
    from hpcrnn.train.loop import run_train  # noqa: PLC0415

    steps, batch = (10, 16) if opts.quick else (200, 128)
    every = max(2, steps // 10)
    common = (
        "model.hidden=256",
        "model.embedding=256",
        "model.layers=1",
        "model.dropout=0",
        "train.optimizer=adam",
        "train.lr=0.002",
        "train.clip_grad=1.0",
        f"train.batch_size={batch}",
        f"train.max_steps={steps}",
        f"train.log_every={every}",
        "train.eval_every=1000000000",
        "train.checkpoint_every=1000000000",
        "train.eval_batches=1",
    )
    variants = [("fp32", "train.precision=fp32"), ("fp32, guard every step", "train.precision=fp32")]
    if device == "cuda":
        low = "bf16" if bf16_ok(device) else "fp16"
        variants.append((low, f"train.precision={low}"))
    cfg0 = run_config(device, opts, f"speed-{device}-0", *common)
    corpus = open_corpus(cfg0.h5_path)
    tokens, starts, V = corpus.tokens(), corpus.windows("train"), len(corpus.vocab)
    hand = [hand_loop(tokens, starts, V, steps, device, batch=batch, window=cfg0.data.window)]
    ours = {}
    for i, (name, prec) in enumerate(variants):
        guard = "train.nonfinite_check_every=1" if "every step" in name else "train.nonfinite_check_every=0"
        cfg = run_config(device, opts, f"speed-{device}-{i}", *common, prec, guard)
        run_train(cfg)
        tps = [r["tokens_per_s"] for r in _records(cfg) if r.get("split") == "train"][1:]  # skip the warm-up
        ours[name] = statistics.median(tps)
    hand.append(hand_loop(tokens, starts, V, steps, device, batch=batch, window=cfg0.data.window))
    ref = statistics.mean(hand)
    figs = f"LSTM 256, batch {batch}, {steps} steps: hand-written loop {ref:,.0f} tok/s; " + ", ".join(
        f"hpcrnn {k} {v:,.0f} ({v / ref:.0%})" for k, v in ours.items()
    )
    return Result("pass", figs)


def check_speed_generate(device: str, opts: Options) -> Result:
    from bench.bench_generate import hpcrnn_loop, lecture_loop  # noqa: PLC0415
    from hpcrnn.config import ModelConfig  # noqa: PLC0415
    from hpcrnn.model.rnn import build_model  # noqa: PLC0415

    vocab, window = 8000, 50
    batch, n, lec_n = (32, 20, 10) if opts.quick else (1024, 200, 60)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="lstm", hidden=256, embedding=256), vocab).to(dev).eval()
    lecture = lecture_loop(model, vocab, window, lec_n, dev)
    got = {}
    for prec in ("fp32", "bf16") if bf16_ok(device) else ("fp32",):
        got[f"greedy {prec}"] = hpcrnn_loop(model, vocab, batch, n, dev, 0.0, 0, 1.0, prec)
        got[f"T 1 top_p .9 {prec}"] = hpcrnn_loop(model, vocab, batch, n, dev, 1.0, 0, 0.9, prec)
    figs = f"random LSTM 256, vocab {vocab}: lecture loop {lecture:,.0f} tok/s; batch {batch}: " + ", ".join(
        f"{k} {v:,.0f} ({v / lecture:,.0f}x)" for k, v in got.items()
    )
    if got["greedy fp32"] <= lecture:
        return Result("fail", figs, "batched generation is not faster than the lecture's loop")
    return Result("pass", figs)


CHECKS: list[tuple[str, Callable[[str, Options], Result]]] = [
    ("pipeline", check_pipeline),
    ("precision", check_precision),
    ("resume", check_resume),
    ("generate", check_generate),
    ("process-group", check_process_group),
    ("divergence", check_divergence),
    ("speed-train", check_speed_train),
    ("speed-generate", check_speed_generate),
]


# ------------------------------------------------------------------------------------------------ running


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


@contextlib.contextmanager
def _torch_settings():
    """What a check may change process-wide (train.deterministic's flags, threads) is put back after it."""
    det, bench, threads = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, None
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det)
        torch.backends.cudnn.benchmark = bench
        torch.set_num_threads(threads)


def run_check(name: str, fn, device: str, opts: Options) -> Result:
    """One check, its output (training and generation lines) to the log file; an exception is a fail."""
    t = time.time()
    with open(opts.log, "a", encoding="utf-8") as log, _torch_settings():
        log.write(f"\n===== {name} on {device}\n")
        log.flush()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                r = fn(device, opts)
        except Exception as e:
            traceback.print_exc(file=log)
            r = Result("fail", reason=f"{type(e).__name__}: {_first_line(e)}")
    r.seconds = time.time() - t
    return r


def table(results: dict[str, Result]) -> str:
    rows = ["| check | result | figures |", "|---|---|---|"]
    for name, r in results.items():
        what = r.status + (f": {r.reason}" if r.reason else "")
        rows.append(f"| {name} | {what} ({r.seconds:.0f} s) | {r.figures} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="short runs (CI's CPU mode)")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="default: the shared recipes-5k")
    ap.add_argument("--only", default="", help="comma-separated check names: " + ",".join(n for n, _ in CHECKS))
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (runs, logs)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU here (torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}): "
            "nothing GPU-specific to check; --device cpu --quick runs the CPU-checkable parts"
        )
        return 0
    names = [n for n in args.only.split(",") if n] or [n for n, _ in CHECKS]
    unknown = set(names) - {n for n, _ in CHECKS}
    if unknown:
        print(f"gpu_check: unknown check(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if not args.corpus.is_file():
        print(f"gpu_check: {args.corpus}: no such corpus file: give one with --corpus", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hpcrnn-gpu-check-"))
    opts = Options(args.quick, args.corpus.resolve(), work, work / "gpu_check.log")
    print(header("gpu_check"), flush=True)
    print(f"# device {args.device}{' --quick' if args.quick else ''}; corpus {opts.corpus}; log {opts.log}", flush=True)
    results: dict[str, Result] = {}
    for name, fn in CHECKS:
        if name in names:
            r = results[name] = run_check(name, fn, args.device, opts)
            print(f"{name:<15} {r.status:<8} {r.seconds:5.0f} s  {r.reason or r.figures}", flush=True)
    print()
    print(table(results))
    failed = [n for n, r in results.items() if r.status == "fail"]
    if args.json:
        args.json.write_text(json.dumps({n: r.__dict__ for n, r in results.items()}, indent=2) + "\n")
    if failed or args.keep:
        print(f"# work directory kept: {work} (log: {opts.log})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
