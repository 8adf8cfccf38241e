"""The training loop behind `python -m hpcrnn.train CONFIG [key=value ...]`.

``_train`` reads top to bottom: set-up (threads, data, model + optimizer + scheduler as a TrainState, resume
through the Checkpointer), then one loop whose every step boundary is a safe place to stop, evaluate and
checkpoint; the steps of the loop are the functions after it. Stopping never happens inside a signal handler: the
handler sets a flag, and at the next step boundary all ranks agree (an all-reduce) so that every rank stops
at the same step and rank 0 writes one complete checkpoint.

Exit statuses (hpcrnn/errors.py): 0 done; 75 checkpointed on the stop signal or the time limit, requeue
me; 76 checkpointed on SIGTERM, stopped (a cancelled job must not come back); 3 non-finite loss;
4 an output could not be written (disk full): the previous checkpoint is intact.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from hpcrnn import process as heap
from hpcrnn.cli import main_for
from hpcrnn.config import Config, save_resolved
from hpcrnn.data.batches import batch_iterator
from hpcrnn.data.sequences import PAD, DocumentBatches
from hpcrnn.errors import EXIT_OK, EXIT_REQUEUE, EXIT_STOPPED, LockedError
from hpcrnn.evaluate.metrics import Scoring, evaluate_split
from hpcrnn.model import memory
from hpcrnn.model.precision import autocast, resolve_precision
from hpcrnn.model.rnn import count_parameters, token_loss, whole_distribution
from hpcrnn.run import corpus_users
from hpcrnn.run.figures import figures_line
from hpcrnn.run.lock import RunLock
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import distributed as D
from hpcrnn.train.checkpointer import Checkpointer, FiniteWatch, diverged_error, nonfinite_check_every
from hpcrnn.train.metrics import MetricsLog, Pace, Progress, sample_recipes
from hpcrnn.train.setup import (
    TrainData,
    build_state,
    configure_torch,
    load_data,
)
from hpcrnn.train.state import TrainState, detach_state
from hpcrnn.train.stopflag import FLAG, STOP_REQUEUE, STOP_STOPPED, StopFlag
from hpcrnn.train.tensorboard import EventLog, logdir_line, summary_writer_class
from hpcrnn.train.wandb_log import check_installed, open_wandb, wanted

# Called at every step boundary with (step, the stop flag) before the ranks agree on stopping, so it may
# request a stop there: tests stop a run at a chosen step this way.
StepBoundaryHook = Callable[[int, StopFlag], None]


@dataclass
class TrainResult:
    status: str  # done | requeue | stopped
    step: int
    exit_code: int
    checkpoint: Path | None = None
    final: dict = field(default_factory=dict)  # final val/test metrics when done


def lm_loss(model, batch: torch.Tensor, loss_mode: str, state=None):
    """(mean loss, logits, targets, new state). ``all``: every position; ``last``: only the word after the
    window, as the lecture's Keras script (one-hot 50-word windows, LSTM(256)) trains. The model is given
    the targets: a pointer model then returns log p(target) alone (``logits`` is that [N]), unless inside
    ``whole_distribution``, where the step needs the distribution (accuracy at a log point)."""
    x, y = batch[:, :-1], batch[:, 1:]
    if loss_mode == "last":
        y = y[:, -1]
        logits, state = model(x, state, last_only=True, targets=y)
    else:
        logits, state = model(x, state, targets=y)
        logits, y = logits.reshape(-1, *logits.shape[2:]), y.reshape(-1)
    return token_loss(model, logits, y), logits, y, state


def run_train(cfg: Config, on_step_boundary: StepBoundaryHook | None = None) -> TrainResult:
    """Train (or resume) the run of ``cfg``. ``on_step_boundary``: see StepBoundaryHook."""
    flag = FLAG.install(cfg.train.stop_signal)  # early: a signal during set-up still ends in a checkpoint
    info = D.init_distributed(cfg.train.device)
    lock, refused, ok = None, None, False
    try:
        if info.is_main:  # one trainer per run directory, across nodes (hpcrnn/run/lock.py)
            try:
                lock = RunLock(cfg.run_dir, "train").acquire()
            except LockedError as e:
                refused = e
        held = D.all_reduce(torch.tensor([0.0 if refused else 1.0]), op=torch.distributed.ReduceOp.MIN)
        if refused or held.item() < 1:  # every rank leaves, none waits for a peer that never comes
            raise refused or LockedError(f"{cfg.run_dir}: rank 0 could not take the run lock")
        result = _train(cfg, info, flag, lock, on_step_boundary)
        ok = True
        return result
    finally:
        flag.restore()
        flag.code, flag.reason = 0, ""  # the process-wide flag is spent with this run
        if lock:
            lock.release()
        D.shutdown(together=ok)


@dataclass
class Training:
    """The parts of one training run, as the steps of the loop below use them."""

    cfg: Config
    info: D.DistInfo
    data: TrainData
    state: TrainState
    saver: Checkpointer
    log: MetricsLog
    progress: Progress
    precision: str = "fp32"  # train.precision as this device trains it (hpcrnn/model/precision.py)
    finite: FiniteWatch = field(default_factory=FiniteWatch)  # the non-finite-loss guard (the saver's too)

    def autocast(self):
        return autocast(self.precision, self.info.device)


def _train(
    cfg: Config, info: D.DistInfo, flag: StopFlag, lock: RunLock | None, hook: StepBoundaryHook | None
) -> TrainResult:
    started = time.time()
    configure_torch(cfg)
    precision = resolve_precision(cfg.train.precision, info.device, "train", cfg.source)
    if cfg.train.tensorboard:  # a missing optional package fails now, on every rank, not after set-up
        summary_writer_class(cfg.source)
    check_installed(cfg)  # train.wandb's package, likewise
    data = load_data(cfg, info)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE") or 1)
    memory.check(
        memory.train_bytes(cfg, len(data.corpus.vocab), info.world_size),
        info.device,
        "train.batch_size, data.window, model.hidden, model.pointer (or the vocabulary: data.min_count)",
        cfg.source,
        ranks_here if ranks_here > 0 else 1,
    )
    state = build_state(cfg, info, data, precision)
    finite = FiniteWatch(nonfinite_check_every(cfg, info.device))
    saver = Checkpointer(cfg, info, data, finite=finite, lock=lock)
    last = saver.resume(state)
    if info.is_main:  # the run is ours and its inputs fit: only now does its config.yaml become this one
        save_resolved(cfg)
        corpus_users.register(cfg.h5_path, cfg.run_dir)  # a shared corpus is never rebuilt under this run
    if last is not None and last.meta.get("done") and (state.step >= data.total or last.meta.get("early_stop")):
        if info.is_main:
            how = "stopped early" if last.meta.get("early_stop") else "done"
            print(f"hpcrnn.train: {cfg.run.name} already {how} at step {state.step} ({last.path})", flush=True)
        return TrainResult("done", state.step, EXIT_OK, last.path, last.meta.get("final", {}))
    net = _wrap_ddp(state.model, info)
    log = _metrics_log(cfg, info, lock, state.step, data.protocol)
    run = Training(cfg, info, data, state, saver, log, Progress(cfg, data.total, info.is_main), precision, finite)
    saver.after_save = partial(_after_save, run)
    _announce(run, last)
    try:
        result = _loop(run, net, flag, started, hook)
        if result.status == "done":
            log.finish(result.step)
        return result
    finally:
        log.close()


def _metrics_log(cfg: Config, info: D.DistInfo, lock: RunLock | None, step: int, protocol: str) -> MetricsLog:
    """metrics.jsonl and, on rank 0, its views: TensorBoard events (train.tensorboard), a W&B run (train.wandb)."""
    events = wandb = None
    if info.is_main and cfg.train.tensorboard:
        events = EventLog(cfg.run_dir, step, cfg.source, protocol=protocol, config=cfg.to_dict())
    if info.is_main and wanted(cfg):
        wandb = open_wandb(cfg, protocol)
    return MetricsLog(cfg.metrics_path, info.is_main, lock, events=events, wandb=wandb)


def _after_save(run: Training, step: int) -> None:
    """Rank 0, after each checkpoint: metrics.csv again, and for TensorBoard a few recipes sampled now."""
    model, corpus, device, seed = run.state.model, run.data.corpus, run.info.device, run.cfg.train.seed
    run.log.checkpoint(step, lambda: sample_recipes(model, corpus, device, seed))


def _loop(
    run: Training, net: torch.nn.Module, flag: StopFlag, started: float, hook: StepBoundaryHook | None
) -> TrainResult:
    """The loop: every iteration boundary is a safe point to stop."""
    cfg, data, state, saver = run.cfg, run.data, run.state, run.saver
    net.train()
    t = cfg.train
    batches = batch_iterator(data.tokens, data.batches, state.step, t.num_workers, str(cfg.h5_path))
    pace = Pace()
    while True:
        code = _agree_on_stop(run, flag, pace, started, hook)
        if code:
            return _stop(run, code, flag.reason)
        if state.step >= data.total:
            return _finish(run, started)
        step_started = time.time()
        tokens = data.tokens_of_step(state.step, t.batch_size, t.loss)
        loss, logits, y = _optimise(run, net, next(batches))
        run.finite.note(loss, state.step)
        pace.tick(step_started, tokens)
        _log_step(run, pace, loss, logits, y)
        val = _validate(run) if state.step % t.eval_every == 0 and state.step < data.total else None
        # a save (and _finish) first reads the non-finite guard: weights past a non-finite loss are never saved
        if val is not None and t.early_stop_patience:
            if state.evals_since_best >= t.early_stop_patience:
                return _finish(run, started, early_stop=True)
            if state.evals_since_best == 0:  # a new best: on disk, so that early stopping can keep it
                saver.save(state, val=val)
                continue
        if state.step % t.checkpoint_every == 0 and state.step < data.total:
            saver.save(state, val=val)


def _wrap_ddp(model: torch.nn.Module, info: D.DistInfo) -> torch.nn.Module:
    if not info.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[info.device.index] if info.device.type == "cuda" else None
    )


def _mode_text(cfg: Config) -> str:
    d = cfg.data
    if d.sequences == "documents":
        return f"whole documents in chunks of {d.max_len}"
    return f"{d.window}-token windows" if d.sequences == "windows" else f"streams, {d.window} tokens a step"


def _announce(run: Training, last: ckpt.CheckpointInfo | None) -> None:
    cfg, info, data = run.cfg, run.info, run.data
    if info.is_main:
        run.progress.line(
            f"hpcrnn.train: {cfg.run.name}: {cfg.model.cell.upper()} {cfg.model.layers}x"
            f"{cfg.model.hidden}, {count_parameters(run.state.model):,} parameters, vocab {len(data.corpus.vocab):,}, "
            f"{_mode_text(cfg)}, "
            f"{data.total} steps from step {run.state.step}, "
            f"{info.world_size} rank(s) on {info.device} ({info.launcher})"
            + (", malloc heap tuned" if heap.heap_tuned() else "")
            + (f", resumed from {last.path.name}" if last else "")
        )
        if run.log.events:
            run.progress.line(logdir_line(cfg.run_dir))
        if run.log.wandb:
            run.progress.line(run.log.wandb.where())


def _agree_on_stop(run: Training, flag: StopFlag, pace: Pace, started: float, hook: StepBoundaryHook | None) -> int:
    """The stop code every rank agrees on at this step boundary (0: go on): the flag of any rank, the hook
    or the time budget stops all of them. A non-finite loss on any rank raises DivergedError on all, at the
    first boundary where the guard is read (FiniteWatch: every step on the CPU)."""
    t, step = run.cfg.train, run.state.step
    if hook is not None:
        hook(step, flag)
    if t.time_limit and time.time() - started + 2 * pace.step_s + run.saver.seconds + 5 >= t.time_limit:
        flag.request(STOP_REQUEUE, "time_limit")
    first = run.finite.read() if run.finite.due(step, run.data.total) else -1
    diverged = 1.0 if first >= 0 else 0.0
    agreed = torch.tensor([float(flag.code), diverged, 1.0 if run.log.failure else 0.0], dtype=torch.float64)
    if run.info.distributed:
        D.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
    run.log.raise_failure(agreed[2] > 0)
    if agreed[1] > 0:
        raise diverged_error(run.cfg, run.state, first, run.finite.every)
    return int(agreed[0])


def _stop(run: Training, code: int, reason: str) -> TrainResult:
    """Checkpoint (unless this step already has one) and say how the job should end."""
    step = run.state.step
    path = run.saver.save(run.state) if run.saver.last_saved != step else ckpt.latest(run.cfg.checkpoint_dir).path
    status = "stopped" if code == STOP_STOPPED else "requeue"
    run.log.append(event="stop", step=step, reason=reason or "requested", status=status)
    run.log.agree()
    if run.info.is_main:
        run.progress.line(
            f"hpcrnn.train: stopped at step {step} ({reason or 'requested'}), "
            f"checkpoint {path}: {'requeue me' if status == 'requeue' else 'stopped'}"
        )
    return TrainResult(status, step, EXIT_STOPPED if status == "stopped" else EXIT_REQUEUE, path)


def _optimise(run: Training, net: torch.nn.Module, batch: torch.Tensor):
    """One optimisation step on this rank's batch: (loss, logits, targets) of its last forward pass."""
    t, state = run.cfg.train, run.state
    batch = batch.to(run.info.device, non_blocking=True)
    state.opt.zero_grad(set_to_none=True)
    # the step _log_step reports accuracy at needs the whole distribution; the others only the loss
    done = state.step + 1
    with whole_distribution(net, done % t.log_every == 0 or done == run.data.total):
        if isinstance(run.data.batches, DocumentBatches):
            loss, logits, y = _documents_backward(run, net, batch)
        else:
            carry = None if run.data.batches.resets(state.step) else state.carry
            with run.autocast():
                loss, logits, y, carry = lm_loss(net, batch, t.loss, carry)
            _backward(run, loss)
            state.carry = detach_state(carry) if run.cfg.data.sequences == "stream" else None
    scaler = state.scaler
    if scaler is not None and scaler.is_enabled():  # fp16: unscaled gradients are clipped, inf/nan steps skipped
        scaler.unscale_(state.opt)
    if t.clip_grad:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), t.clip_grad)
    if scaler is not None and scaler.is_enabled():
        scaler.step(state.opt)
        scaler.update()
    else:
        state.opt.step()
    if t.schedule != "plateau":
        state.sched.step()
    state.step += 1
    return loss, logits, y


def _backward(run: Training, loss: torch.Tensor) -> None:
    scaler = run.state.scaler
    (scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss).backward()


def _documents_backward(run: Training, net: torch.nn.Module, batch: torch.Tensor):
    """Whole documents in chunks of data.max_len, the state carried (detached) from chunk to chunk, one
    backward per chunk. Each rank's loss is its token-loss sum over the global batch's token count times
    the world size, so DDP's gradient average is the global per-token mean: 2 ranks train what 1 trains.
    Every rank runs as many chunks as the global batch's longest document needs (rows are padded to it),
    so the ranks' gradient all-reduces pair up."""
    chunk, step = run.cfg.data.max_len, run.state.step
    scale = run.info.world_size / max(1, run.data.batches.global_tokens(step))
    starts = list(range(0, batch.shape[1] - 1, chunk))
    state, total, count = None, 0.0, 0
    for i, a in enumerate(starts):
        part = batch[:, a : a + chunk + 1]
        sync = i == len(starts) - 1 or not hasattr(net, "no_sync")
        with contextlib.nullcontext() if sync else net.no_sync(), run.autocast():
            y = part[:, 1:]
            logits, state = net(part[:, :-1].clamp_min(0), state, targets=y)
            logits, y = logits.reshape(-1, *logits.shape[2:]), y.reshape(-1)
            loss_sum = token_loss(net, logits, y, ignore_index=PAD, reduction="sum")
            _backward(run, loss_sum * scale)
        state = detach_state(state)
        total, count = total + loss_sum.detach(), count + int((y != PAD).sum())
    return total / max(count, 1), logits, y


def _log_step(run: Training, pace: Pace, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
    """At log points a train record and a progress line. On a GPU the loss is read back only there (and at
    the first step, for the bar), keeping the hot loop free of syncs; on the CPU, where a read is free,
    every step feeds the running loss. In between only a terminal bar moves."""
    step, total, progress = run.state.step, run.data.total, run.progress
    log_point = step % run.cfg.train.log_every == 0 or step == total
    if log_point or run.info.device.type == "cpu" or (progress.bar and progress.last_loss is None):
        lv = loss.item()
        progress.note_loss(lv, step)
    if not log_point:
        if progress.due():
            _show(run, pace, False)
        return
    tps = pace.tokens_per_s()
    with torch.no_grad():
        keep = y != PAD
        logits, y = logits[keep], y[keep]
        top5 = logits.float().topk(min(5, logits.shape[-1]), -1).indices
        acc = (top5[:, 0] == y).float().mean().item()
        acc5 = (top5 == y[:, None]).any(-1).float().mean().item()
    lr = run.state.opt.param_groups[0]["lr"]
    epoch = run.data.batches.position(step)[0]
    rec = dict(loss=lv, ppl=math.exp(min(lv, 50)), acc=acc, top5=acc5, tokens_per_s=tps, lr=lr)
    run.log.append(step=step, epoch=epoch, split="train", **rec)
    _show(run, pace, True)


def _show(run: Training, pace: Pace, line: bool) -> None:
    """The bar (or with ``line``, in a batch log, a line): the running loss, the recent pace, the ETA."""
    step, total = run.state.step, run.data.total
    tps, ips = pace.window()
    eta = (total - step) / ips if ips else 0.0
    lr = run.state.opt.param_groups[0]["lr"]
    run.progress.update(step, run.progress.last_loss, tps, eta, lr, line, ips)


def _evaluate(run: Training, split: str, protocol: str, max_batches: int = 0) -> dict:
    info = run.info
    how = Scoring(info.rank, info.world_size, info.device, D.all_reduce, autocast=run.autocast)
    return evaluate_split(
        run.state.model, run.data.corpus, run.data.tokens, split, protocol, run.cfg, how=how, max_batches=max_batches
    )


def _validate(run: Training) -> dict:
    """The periodic validation, in the run's own protocol: recorded, fed to the plateau schedule, kept as
    the best val loss (and its step) or counted as one more validation without a better one."""
    cfg, state = run.cfg, run.state
    val = _evaluate(run, "val", run.data.protocol, cfg.train.eval_batches)
    if cfg.train.schedule == "plateau":
        state.sched.step(val["loss"])
    if state.best_val is None or val["loss"] < state.best_val:
        state.best_val, state.best_step, state.evals_since_best = val["loss"], state.step, 0
    else:
        state.evals_since_best += 1
    # a subset of the split (only the windows protocol stops after eval_batches); the final evaluation reads all
    estimate = cfg.train.eval_batches > 0 and run.data.protocol == "windows"
    _record_eval(run, "val", val, protocol=run.data.protocol, estimate=estimate)
    if run.info.is_main:
        how = f"estimate on {cfg.train.eval_batches} batches" if estimate else "full split"
        run.progress.line(
            f"step {state.step} val loss {val['loss']:.4f} ppl {val['ppl']:.2f} "
            f"acc {val['acc']:.1%} top5 {val['top5']:.1%} ({run.data.protocol} protocol, {how})"
        )
    return val


def _record_eval(run: Training, split: str, result: dict, **extra) -> None:
    run.log.append(
        step=run.state.step,
        epoch=run.data.batches.position(run.state.step)[0],
        split=split,
        lr=run.state.opt.param_groups[0]["lr"],
        tokens_per_s=None,
        **extra,
        **{k: v for k, v in result.items() if k != "tokens"},
    )


def _restore_best(run: Training) -> dict:
    """Early stopping: load the weights of the best validation into the model (every rank reads the best
    checkpoint, which was written when it was found); what the done checkpoint records about it."""
    state, t = run.state, run.cfg.train
    best = ckpt.resolve(run.cfg.checkpoint_dir, str(state.best_step))
    state.model.load_state_dict(ckpt.load_model_state(best, map_location=run.info.device))
    info = {"step": state.step, "best_step": state.best_step, "best_val_loss": state.best_val}
    info["patience"] = t.early_stop_patience
    run.log.append(event="early_stop", **info)
    if run.info.is_main:
        run.progress.line(
            f"hpcrnn.train: stopping early at step {state.step}: no better validation loss in "
            f"{state.evals_since_best} evaluations; the best ({state.best_val:.4f}) was at step {state.best_step}, "
            f"whose weights the final checkpoint keeps"
        )
    return info


def _finish(run: Training, started: float, early_stop: bool = False) -> TrainResult:
    """Full val and test evaluation in the run's own protocol and in the standard one, then the final
    checkpoint, marked done. ``final[split]`` holds the run's own protocol, ``final["standard"][split]``
    the standard protocol's figures, comparable with published word-LM results. An early stop evaluates
    and saves the best validation's weights (the best checkpoint itself stays too)."""
    run.saver.check_finite(run.state)  # not a word of evaluation for weights past a non-finite loss
    stopped = _restore_best(run) if early_stop else None
    final, standard = {}, {}
    for split in ("val", "test"):
        lo, hi = run.data.corpus.split_ranges[split]
        if hi - lo < 2:
            continue
        for protocol in dict.fromkeys([run.data.protocol, "standard"]):
            r = _evaluate(run, split, protocol)
            if r["tokens"]:
                _record_eval(run, split, r, final=True, protocol=protocol)
                (standard if protocol == "standard" else final)[split] = r
        if run.data.protocol == "standard" and split in standard:
            final[split] = standard[split]
    final["standard"] = standard
    run.log.agree()
    path = run.saver.save(run.state, done=True, val=final.get("val"), final=final, early_stop=stopped)
    if run.info.is_main:
        msg = figures_line(final, run.data.protocol)
        took = time.time() - started
        run.progress.line(f"hpcrnn.train: done at step {run.state.step} in {took:.0f} s: {msg}; {path}")
    return TrainResult("done", run.state.step, EXIT_OK, path, final)


def _run_to_exit(cfg: Config) -> TrainResult:
    result = run_train(cfg)
    heap.ignore_stop_signal(cfg.train.stop_signal)  # the outcome is on disk; see there
    return result


def main(argv: list[str] | None = None) -> int:
    code = main_for(
        "hpcrnn.train",
        "Train (or resume) a recurrent language model on the run's HDF5 windows.",
        lambda cfg, args: _run_to_exit(cfg),
        argv,
    )
    return D.exit_process(code)  # after a multi-rank run: os._exit (see there)
