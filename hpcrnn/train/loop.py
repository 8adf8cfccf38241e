"""The training loop behind `python -m hpcrnn.train CONFIG [key=value ...]`.

Read top to bottom: set-up (ranks, data, model, optimizer, resume), then one loop whose every step boundary
is a safe place to stop, evaluate and checkpoint. Stopping never happens inside a signal handler: the
handler sets a flag, and at the next step boundary all ranks agree (an all-reduce) so that every rank stops
at the same step and rank 0 writes one complete checkpoint.

Exit statuses (hpcrnn/errors.py): 0 done; 75 checkpointed on the stop signal or the time limit, requeue
me; 76 checkpointed on SIGTERM, stopped (a cancelled job must not come back); 3 non-finite loss;
4 an output could not be written (disk full): the previous checkpoint is intact.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hpcrnn.config import Config
from hpcrnn.data.batches import WindowBatches, batch_iterator
from hpcrnn.data.build import open_corpus
from hpcrnn.errors import EXIT_OK, EXIT_REQUEUE, EXIT_STOPPED, DivergedError, InputError, LockedError, StorageError
from hpcrnn.fsutil import append_jsonl
from hpcrnn.lock import RunLock
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import distributed as D
from hpcrnn.train.model import build_model, count_parameters
from hpcrnn.train.stopflag import FLAG, STOP_REQUEUE, STOP_STOPPED, StopFlag


@dataclass
class TrainResult:
    status: str  # done | requeue | stopped
    step: int
    exit_code: int
    checkpoint: Path | None = None
    final: dict = field(default_factory=dict)  # final val/test metrics when done


def total_steps(cfg: Config, batches_per_epoch: int) -> int:
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * batches_per_epoch))


def lr_factor(cfg: Config, total: int):
    t = cfg.train
    floor = t.min_lr / t.lr

    def f(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps and t.schedule != "plateau":
            return (step + 1) / t.warmup_steps
        if t.schedule == "cosine":
            span = max(1, total - t.warmup_steps)
            progress = min(1.0, (step - t.warmup_steps) / span)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return f


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def make_scheduler(cfg: Config, opt: torch.optim.Optimizer, total: int):
    if cfg.train.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=cfg.train.plateau_factor, patience=cfg.train.plateau_patience, min_lr=cfg.train.min_lr
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, total))


def lm_loss(model, batch: torch.Tensor, loss_mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, logits, targets). ``all``: every position; ``last``: the lecture's next word only."""
    x, y = batch[:, :-1], batch[:, 1:]
    if loss_mode == "last":
        logits, _ = model(x, last_only=True)
        y = y[:, -1]
    else:
        logits, _ = model(x)
        logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    return F.cross_entropy(logits.float(), y), logits, y


def rng_state() -> dict:
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(
    model, tokens: np.ndarray, starts: np.ndarray, cfg: Config, info: D.DistInfo, max_batches: int = 0
) -> dict:
    """Loss, perplexity, top-1 and top-5 next-word accuracy over a split, sharded over the ranks."""
    from hpcrnn.data.batches import gather_windows

    gb, win = cfg.train.batch_size, cfg.data.window
    n_batches = math.ceil(len(starts) / gb)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, correct1, correct5, n
    for b in range(n_batches):
        chunk = starts[b * gb : (b + 1) * gb]
        mine = np.array_split(chunk, info.world_size)[info.rank]
        if len(mine) == 0:
            continue
        batch = gather_windows(tokens, mine, win).to(info.device)
        with autocast(cfg, info):
            loss, logits, y = lm_loss(model, batch, cfg.train.loss)
        top5 = logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices
        n = y.numel()
        sums += torch.tensor(
            [loss.item() * n, (top5[:, 0] == y).sum().item(), (top5 == y[:, None]).any(-1).sum().item(), n],
            dtype=torch.float64,
        )
    D.all_reduce(sums)
    model.train(was_training)
    n = max(sums[3].item(), 1.0)
    loss = sums[0].item() / n
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 50.0)),
        "acc": sums[1].item() / n,
        "top5": sums[2].item() / n,
        "tokens": int(sums[3].item()),
    }


def autocast(cfg: Config, info: D.DistInfo):
    on = cfg.train.bf16 and info.device.type == "cuda"
    return torch.autocast(device_type=info.device.type, dtype=torch.bfloat16, enabled=on)


def check_compatible(meta: dict, cfg: Config, vocab_hash: str, path: Path) -> None:
    """Refuse a checkpoint that does not fit the data and config, saying which."""
    if meta.get("vocab_hash") != vocab_hash:
        raise InputError(
            f"{path}: checkpoint vocabulary {str(meta.get('vocab_hash'))[:12]} does not match "
            f"the corpus {cfg.h5_path} ({vocab_hash[:12]}): use a new run.name or the same data"
        )
    old = meta.get("config", {}).get("model", {})
    diff = [
        f"model.{k}: {old.get(k)!r} -> {v!r}"
        for k, v in cfg.to_dict()["model"].items()
        if k != "dropout" and old.get(k) != v
    ]
    if diff:
        raise InputError(
            f"{path}: checkpoint model shape does not fit the config ({'; '.join(diff)}): use a new run.name"
        )


def training_done(cfg: Config) -> bool:
    """Has this run's training reached the target of ``cfg`` (not only the target it was started with)?"""
    c = ckpt.latest(cfg.checkpoint_dir)
    if not (c and c.meta.get("done")):
        return False
    if cfg.train.max_steps:
        return c.step >= cfg.train.max_steps
    old = c.meta.get("config", {}).get("train", {})
    same_plan = old.get("max_steps") == 0 and old.get("batch_size") == cfg.train.batch_size
    return same_plan and old.get("epochs", 0) >= cfg.train.epochs


class Progress:
    """A bar on a terminal; plain periodic lines (step, loss, tokens/s, ETA) in a batch log."""

    def __init__(self, cfg: Config, total: int, enabled: bool):
        mode = cfg.train.progress
        self.bar = enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty()))
        self.enabled, self.total = enabled, total

    def update(self, step: int, loss: float, tps: float, eta: float, lr: float, force_line: bool) -> None:
        if not self.enabled:
            return
        eta_s = time.strftime("%H:%M:%S", time.gmtime(max(eta, 0)))
        if self.bar:
            done = int(30 * step / self.total)
            sys.stderr.write(
                f"\r[{'#' * done}{'.' * (30 - done)}] {step}/{self.total} loss {loss:.3f} {tps:,.0f} tok/s eta {eta_s} "
            )
            sys.stderr.flush()
        elif force_line:
            print(
                f"step {step}/{self.total} loss {loss:.4f} ppl {math.exp(min(loss, 50)):.1f} "
                f"lr {lr:.3g} {tps:,.0f} tok/s eta {eta_s}",
                flush=True,
            )

    def line(self, text: str) -> None:
        if self.enabled:
            if self.bar:
                sys.stderr.write("\n")
            print(text, flush=True)


def run_train(cfg: Config, stop_at_step: int | None = None) -> TrainResult:
    """Train (or resume) the run of ``cfg``. ``stop_at_step`` simulates a stop signal there (tests)."""
    t = cfg.train
    flag = FLAG.install(t.stop_signal)  # early: a signal during set-up still ends in a checkpoint
    info = D.init_distributed(t.device)
    lock, refused, ok = None, None, False
    try:
        if info.is_main:  # one trainer per run directory, across nodes (hpcrnn/lock.py)
            try:
                lock = RunLock(cfg.run_dir, "train").acquire()
            except LockedError as e:
                refused = e
        held = D.all_reduce(torch.tensor([0.0 if refused else 1.0]), op=torch.distributed.ReduceOp.MIN)
        if refused or held.item() < 1:  # every rank leaves, none waits for a peer that never comes
            raise refused or LockedError(f"{cfg.run_dir}: rank 0 could not take the run lock")
        result = _train(cfg, info, flag, stop_at_step, lock)
        ok = True
        return result
    finally:
        flag.restore()
        flag.code, flag.reason = 0, ""  # the process-wide flag is spent with this run
        if lock:
            lock.release()
        D.shutdown(together=ok)


def _train(cfg: Config, info: D.DistInfo, flag: StopFlag, stop_at_step, lock: RunLock | None) -> TrainResult:
    t = cfg.train
    t0 = time.time()
    threads = t.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0) or 0)
    if threads:
        torch.set_num_threads(threads)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if t.batch_size % info.world_size:
        raise InputError(
            f"{cfg.source}: train.batch_size: {t.batch_size} is not divisible by the {info.world_size} ranks"
        )

    # ---- data: the token stream in memory (~2 bytes a token), windows as start offsets
    corpus = open_corpus(cfg.h5_path)
    if corpus.window != cfg.data.window:
        raise InputError(
            f"{cfg.h5_path}: built with window {corpus.window}, config says data.window "
            f"{cfg.data.window}: preprocess again"
        )
    tokens = corpus.tokens()
    train_starts, val_starts = corpus.windows("train"), corpus.windows("val")
    batches = WindowBatches(train_starts, t.batch_size, info.rank, info.world_size, t.seed)
    if batches.batches_per_epoch == 0:
        raise InputError(
            f"{cfg.h5_path}: {len(train_starts)} training windows are fewer than one global "
            f"batch of {t.batch_size}: lower train.batch_size"
        )
    total = total_steps(cfg, batches.batches_per_epoch)

    # ---- model and optimizer, seeded identically on every rank (DDP also broadcasts rank 0's weights)
    seed_everything(t.seed)
    model = build_model(cfg.model, len(corpus.vocab)).to(info.device)
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt, total)
    scaler = torch.amp.GradScaler(enabled=False)  # bf16 needs no loss scaling; kept for the format
    step, best_val = 0, None

    # ---- resume from the newest complete checkpoint, if any
    ckpt.clean_temporaries(cfg.checkpoint_dir) if info.is_main else None
    D.barrier()
    last = ckpt.latest(cfg.checkpoint_dir)
    if last is not None:
        check_compatible(last.meta, cfg, corpus.vocab_hash, last.path)
        model.load_state_dict(ckpt.load_model_state(last, map_location=info.device))
        state = ckpt.load_train_state(last)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, best_val = state["step"], state.get("best_val")
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:  # another world size: data order is step-determined; reseed dropout per rank
            seed_everything(t.seed + 1000003 * info.rank + step)
        if last.meta.get("done") and step >= total:
            if info.is_main:
                print(f"hpcrnn.train: {cfg.run.name} already done at step {step} ({last.path})", flush=True)
            return TrainResult("done", step, EXIT_OK, last.path, last.meta.get("final", {}))
    else:
        seed_everything(t.seed + 1000003 * info.rank)  # per-rank dropout streams
    ddp = model
    if info.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )

    progress = Progress(cfg, total, info.is_main)
    if info.is_main:
        progress.line(
            f"hpcrnn.train: {cfg.run.name}: {cfg.model.cell.upper()} {cfg.model.layers}x"
            f"{cfg.model.hidden}, {count_parameters(model):,} parameters, vocab {len(corpus.vocab):,}, "
            f"{len(train_starts):,} train windows, {total} steps from step {step}, "
            f"{info.world_size} rank(s) on {info.device} ({info.launcher})"
            + (f", resumed from {last.path.name}" if last else "")
        )

    def save(step: int, done: bool = False, val: dict | None = None, final: dict | None = None) -> Path:
        rngs = D.all_gather_object(rng_state())
        path, failed = None, None
        if info.is_main:
            epoch, pos = batches.position(step)
            train_state = {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "epoch": epoch,
                "position": pos,
                "rng": rngs,
                "best_val": best_val,
            }
            meta = {
                "run": cfg.run.name,
                "epoch": epoch,
                "position": pos,
                "done": done,
                "total_steps": total,
                "time": time.time(),
                "world_size": info.world_size,
                "vocab_hash": corpus.vocab_hash,
                "vocab_size": len(corpus.vocab),
                "val_loss": val["loss"] if val else None,
                "config": cfg.to_dict(),
                "final": final or {},
                "hpcrnn_version": _version(),
            }
            try:
                path = ckpt.save_checkpoint(cfg.checkpoint_dir, step, model.state_dict(), train_state, meta)
                ckpt.retain(cfg.checkpoint_dir, t.keep_last)
            except OSError as e:
                failed = e
        # every rank learns whether rank 0's write worked, so none waits forever for a dead peer
        ok = torch.tensor([0.0 if (info.is_main and failed) else 1.0])
        D.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        if ok.item() < 1:
            prev = ckpt.latest(cfg.checkpoint_dir)
            why = f"{failed.strerror or failed}" if info.is_main else "rank 0 could not write it"
            raise StorageError(
                f"{cfg.checkpoint_dir}: cannot write checkpoint {ckpt.step_dir_name(step)}: {why}; "
                f"the previous checkpoint {prev.path if prev else '(none)'} is intact"
            )
        return path

    def record(**rec) -> None:
        if info.is_main:
            rec.setdefault("time", time.time())
            try:
                append_jsonl(cfg.metrics_path, rec)
            except OSError as e:
                raise StorageError(f"{cfg.metrics_path}: cannot append metrics: {e.strerror or e}") from None
            if lock:
                lock.heartbeat()  # the run lock's proof of life for readers on other nodes

    # ---- the loop: every iteration boundary is a safe point to stop
    ddp.train()
    data = batch_iterator(tokens, batches, cfg.data.window, step, t.num_workers, str(cfg.h5_path))
    tokens_per_step = t.batch_size * (cfg.data.window if t.loss == "all" else 1)
    interval_t, interval_n, last_loss = time.time(), 0, float("nan")
    step_time, ckpt_time, last_saved = 0.0, 0.0, (last.step if last else None)
    stop_vec = torch.zeros(2, dtype=torch.float64)  # [stop code, non-finite loss]
    loss = None
    while True:
        # agree on stopping: the flag of any rank (or the time budget) stops all of them here
        code = flag.code
        if stop_at_step is not None and step >= stop_at_step:
            flag.request(STOP_REQUEUE, "stop_at_step")
            code = flag.code
        if t.time_limit and time.time() - t0 + 2 * step_time + ckpt_time + 5 >= t.time_limit:
            flag.request(STOP_REQUEUE, "time_limit")
            code = flag.code
        stop_vec[0], stop_vec[1] = code, 0.0 if loss is None or torch.isfinite(loss) else 1.0
        if info.distributed:
            D.all_reduce(stop_vec, op=torch.distributed.ReduceOp.MAX)
        if stop_vec[1] > 0:
            good = ckpt.latest(cfg.checkpoint_dir)
            raise DivergedError(
                f"non-finite loss at step {step} (lr {opt.param_groups[0]['lr']:.3g}); the last "
                f"good checkpoint is {good.path if good else 'none'}: lower train.lr or "
                f"set train.clip_grad"
            )
        code = int(stop_vec[0])
        if code:
            path = save(step) if last_saved != step else ckpt.latest(cfg.checkpoint_dir).path
            status = "stopped" if code == STOP_STOPPED else "requeue"
            record(event="stop", step=step, reason=flag.reason or "stop_at_step", status=status)
            if info.is_main:
                progress.line(
                    f"hpcrnn.train: stopped at step {step} ({flag.reason or 'requested'}), "
                    f"checkpoint {path}: {'requeue me' if status == 'requeue' else 'stopped'}"
                )
            return TrainResult(status, step, EXIT_STOPPED if status == "stopped" else EXIT_REQUEUE, path)
        if step >= total:
            break

        # one optimisation step
        ts = time.time()
        _, batch = next(data)
        batch = batch.to(info.device, non_blocking=True)
        with autocast(cfg, info):
            loss, logits, y = lm_loss(ddp, batch, t.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
        opt.step()
        if t.schedule != "plateau":
            sched.step()
        step += 1
        step_time = 0.9 * step_time + 0.1 * (time.time() - ts) if step_time else time.time() - ts

        # logging (the loss is read back only at log points, keeping the hot loop free of syncs on GPU)
        interval_n += 1
        if step % t.log_every == 0 or step == total:
            lv, now = loss.item(), time.time()
            tps = interval_n * tokens_per_step / max(now - interval_t, 1e-9)
            with torch.no_grad():
                top5 = logits.float().topk(min(5, logits.shape[-1]), -1).indices
                acc = (top5[:, 0] == y).float().mean().item()
                acc5 = (top5 == y[:, None]).any(-1).float().mean().item()
            lr = opt.param_groups[0]["lr"]
            record(
                step=step,
                epoch=batches.position(step)[0],
                split="train",
                loss=lv,
                ppl=math.exp(min(lv, 50)),
                acc=acc,
                top5=acc5,
                tokens_per_s=tps,
                lr=lr,
            )
            progress.update(step, lv, tps, (total - step) * step_time, lr, force_line=True)
            last_loss, interval_t, interval_n = lv, now, 0
        elif progress.bar:
            progress.update(step, last_loss, 0.0, (total - step) * step_time, opt.param_groups[0]["lr"], False)

        val = None
        if step % t.eval_every == 0 and step < total:
            val = evaluate(model, tokens, val_starts, cfg, info, t.eval_batches)
            if t.schedule == "plateau":
                sched.step(val["loss"])
            best_val = val["loss"] if best_val is None else min(best_val, val["loss"])
            record(
                step=step,
                epoch=batches.position(step)[0],
                split="val",
                lr=opt.param_groups[0]["lr"],
                tokens_per_s=None,
                **{k: v for k, v in val.items() if k != "tokens"},
            )
            if info.is_main:
                progress.line(
                    f"step {step} val loss {val['loss']:.4f} ppl {val['ppl']:.1f} "
                    f"acc {val['acc']:.3f} top5 {val['top5']:.3f}"
                )
        if step % t.checkpoint_every == 0 and step < total and torch.isfinite(loss):
            tc = time.time()
            save(step, val=val)
            last_saved, ckpt_time = step, time.time() - tc

    # ---- the end: full val and test evaluation, then the final checkpoint marked done
    final = {}
    for split in ("val", "test"):
        starts = corpus.windows(split)
        if len(starts):
            r = evaluate(model, tokens, starts, cfg, info, 0)
            final[split] = r
            record(
                step=step,
                epoch=batches.position(step)[0],
                split=split,
                lr=opt.param_groups[0]["lr"],
                tokens_per_s=None,
                final=True,
                **{k: v for k, v in r.items() if k != "tokens"},
            )
    path = save(step, done=True, val=final.get("val"), final=final)
    if info.is_main:
        msg = ", ".join(f"{k} ppl {v['ppl']:.2f} acc {v['acc']:.3f}" for k, v in final.items())
        progress.line(f"hpcrnn.train: done at step {step} in {time.time() - t0:.0f} s: {msg}; {path}")
    return TrainResult("done", step, EXIT_OK, path, final)


def _version() -> str:
    from hpcrnn import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    from hpcrnn.cli import main_for

    code = main_for(
        "hpcrnn.train",
        "Train (or resume) a recurrent language model on the run's HDF5 windows.",
        lambda cfg, args: run_train(cfg),
        argv,
    )
    return D.exit_process(code)  # after a multi-rank run: os._exit (see there)
