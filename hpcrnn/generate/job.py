"""The generation job: many recipes from a trained checkpoint, batched, reproducible, resumable.

    python -m hpcrnn.generate CONFIG [key=value ...] [--shard S --num-shards N]

What ``run_generate`` does:

* Loads the newest *complete* checkpoint of the run (or ``generate.checkpoint``: a step number or a
  folder) and refuses one whose vocabulary differs from the corpus'. ``generate.checkpoint`` may also
  name a model file (``python -m hpcrnn.export``), which brings its own vocabulary: the run's corpus.h5 is
  then used only if it is there with the same vocabulary (for ``random`` prompts and the real recipes'
  figures in summary.json).
* Agrees on a plan with the other tasks (``plan.json``, see :mod:`hpcrnn.run.generated`): the checkpoint,
  the vocabulary and the settings that decide the recipes' content, ``generate.precision: auto`` resolved
  once. Recipes made from checkpoint step N are never mixed with another step's (a newer checkpoint asks
  for ``generate.checkpoint=N`` to finish them, or another ``generate.name``); a plan under which no
  recipe exists yet is simply replaced. Other settings with the default ``generate.name`` write to a
  folder named after them (``generated/t1.0/``, see :func:`hpcrnn.run.generated.output_name`), said in
  one line; a folder given by name that holds other settings is refused, naming the ``generate.name`` to pass.
* With ``generate.prompts`` (a file of prompts), ``generate.num_recipes`` recipes for each prompt,
  numbered as :mod:`hpcrnn.generate.prompts` says, batched across prompts; each index entry names its
  prompt (``prompt_number``, ``prompt_title``) and the figures ``listed_used`` / ``extra_items``.
* Generates this shard's missing recipes with a fixed number of *slots* (``generate.batch_size``) by
  continuous batched decoding (:mod:`hpcrnn.generate.decode`), primed as :mod:`hpcrnn.generate.prompts`
  says. Shard ``s`` of ``n`` owns recipes ``i`` with ``(i - 1) % n == s``; a rerun skips every recipe
  already present (from any shard layout), so a killed job continues where it stopped.
* ``generate.listed_bias`` / ``unlisted_bias`` (0: off) steer the instructions towards the recipe's listed
  ingredients (:mod:`hpcrnn.generate.constrain`).
* Describes and writes each finished recipe off the decoding loop (:mod:`hpcrnn.generate.describe`).
* When every recipe 1..N is present, the task that notices writes ``index.jsonl`` and ``summary.json``
  (generated figures beside the same figures of a sample of real test-split recipes).

Reproducibility: recipe *i* draws its random numbers from its own stream seeded with
``(generate.seed, i)`` — per generated token one uniform (``ROUNDS`` when top_k/top_p truncate: one per
rejection draw, see :mod:`hpcrnn.generate.sampling`) — so the same seed and checkpoint give the same files
whatever the batch size, shard count or order (tested on CPU; on a GPU the matrix kernels may change with
the batch shape, and a last-bit difference in the logits can, rarely, change a sampled token).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from hpcrnn.cli import make_parser, run_cli
from hpcrnn.config import Config, GenerateConfig, ModelConfig
from hpcrnn.errors import EXIT_OK, ConfigError, InputError, StorageError
from hpcrnn.fsutil import atomic_write_json
from hpcrnn.generate.constrain import decoding_lexicon
from hpcrnn.generate.corpus_view import CorpusView
from hpcrnn.generate.decode import generate_batched
from hpcrnn.generate.describe import (
    Describer,
    QualityContext,
    RecipeWriter,
    build_quality_context,
    ingredient_openers,
    ingredient_words,
    quality_workers,
    torch_threads,
)
from hpcrnn.generate.prompts import PromptPlan, PromptSet, make_job, plan_prompt, recipe_count
from hpcrnn.generate.summary import job_summary
from hpcrnn.model import memory
from hpcrnn.model.file import ModelFile, read_model_file
from hpcrnn.model.precision import resolve_precision
from hpcrnn.model.restore import open_latest
from hpcrnn.model.source import generation_done  # noqa: F401 -- the tests ask the job module
from hpcrnn.process import available_cpus, keep_freed_memory
from hpcrnn.progress import Meter
from hpcrnn.run.checkpoints import CheckpointInfo, names_file
from hpcrnn.run.compat import check_compatible
from hpcrnn.run.generated import (
    DEFAULT_NAME,
    PLAN,
    SUMMARY,
    create_exclusive,
    default_conflict,
    generation_settings,
    output_dir,
    output_name,
    present_recipes,
    read_json,
    remove_own_temporaries,
    settings_name,
    shard_index_name,
    write_merged,
    write_recipe,
)


@dataclass
class GenerateResult:
    out_dir: Path
    shard: int
    num_shards: int
    assigned: int  # recipes this shard owns
    written: int  # recipes written by this call
    skipped: int  # recipes already present (a rerun)
    tokens: int  # tokens generated by this call (prompts not counted)
    seconds: float  # generation wall time of this call
    tokens_per_s: float
    complete: bool  # every recipe 1..N present and index.jsonl/summary.json written
    checkpoint_step: int
    exit_code: int = EXIT_OK


@dataclass
class _Source:
    """What this call generates from, checked against each other: corpus, prompt, checkpoint, device."""

    cv: CorpusView
    prompt: PromptPlan | PromptSet
    info: CheckpointInfo
    model: torch.nn.Module  # on the CPU until the describing workers have forked
    device: torch.device
    precision: str  # of the matrix products: the plan's


def _log(msg: str) -> None:
    print(f"hpcrnn.generate: {msg}", flush=True)


def shard_recipes(num_recipes: int, shard: int, num_shards: int) -> list[int]:
    """Recipe numbers (1-based) of one shard: i with (i - 1) % num_shards == shard."""
    return list(range(shard + 1, num_recipes + 1, num_shards))


def _check_shard(cfg: Config, shard: int, num_shards: int) -> None:
    """The shard arguments (the generate settings themselves are checked when the config loads)."""
    src = cfg.source or "<config>"
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError(f"{src}: num_shards: {num_shards!r} must be a positive integer")
    if not isinstance(shard, int) or not 0 <= shard < num_shards:
        raise ConfigError(f"{src}: shard: {shard!r} must be in 0..{num_shards - 1}")


def _device(cfg: Config) -> torch.device:
    want = cfg.generate.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.source}: generate.device: cuda requested but no GPU is visible")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def model_file_of(cfg: Config) -> ModelFile | None:
    """The model file ``generate.checkpoint`` names, read and checked; None when it names a checkpoint."""
    which = cfg.generate.checkpoint
    return read_model_file(which) if names_file(which) else None


def view_for(cfg: Config, mf: ModelFile) -> CorpusView:
    """What generation from a model file reads of a corpus: the run's corpus.h5 when it is there with the
    file's vocabulary, else the file's vocabulary alone."""
    h5 = Path(cfg.h5_path)
    if h5.is_file():
        try:
            cv = CorpusView.open(h5)
        except InputError:
            cv = None
        if cv is not None and cv.vocab_hash == mf.vocabulary.vocab_hash:
            return cv
        _log(f"{h5} has another vocabulary than {mf.path}: generating from the model file's own")
    return CorpusView.of_vocabulary(mf.vocabulary)


def prompt_ring(pp: PromptPlan | PromptSet, max_tokens: int) -> int:
    """The most tokens one recipe reads: its prompt and what it generates (a pointer's ring needs no more)."""
    if isinstance(pp, PromptSet):
        return max(len(p.fixed) for p in pp.plans) + max_tokens
    return (pp.window if pp.kind == "random" else len(pp.fixed)) + max_tokens


def _open_source(cfg: Config, out: Path) -> _Source:
    """Corpus, prompt and checkpoint, checked before anything is written; then the plan in ``out``."""
    mf = model_file_of(cfg)
    cv = CorpusView.open(cfg.h5_path) if mf is None else view_for(cfg, mf)
    prompt = plan_prompt(cfg, cv)  # a bad prompt fails before anything is loaded or written
    if mf is not None:
        info, model = CheckpointInfo(mf.step, mf.path, mf.meta), mf.build_model()
    else:
        # read the weights right away: a trainer beside us may delete this checkpoint (retention) at any
        # time; open_latest picks again if it vanished between choosing and reading
        info, model, meta = open_latest(cfg.checkpoint_dir, cfg.generate.checkpoint, "cpu")
        # the model is built in the checkpoint's own shape: only the vocabulary must be the corpus'
        check_compatible(meta, cfg, cv.vocab_hash, info.path, vocab_size=len(cv.vocab), model_shape=False)
    device = _device(cfg)
    ring = prompt_ring(prompt, cfg.generate.max_tokens)
    mcfg = ModelConfig(**info.meta["config"]["model"])
    need = memory.generate_bytes(cfg, mcfg, len(cv.vocab), ring)
    memory.check(need, device, "generate.batch_size (or generate.max_tokens, with a pointer)", cfg.source)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"{out}: cannot create: {e.strerror or e}") from None
    want = resolve_precision(cfg.generate.precision, device, "generate", cfg.source, say=_log)
    precision = _agree_plan(cfg, out, info, cv, want, prompt)
    return _Source(cv, prompt, info, model, device, precision)


def _agree_plan(cfg: Config, out: Path, info: CheckpointInfo, cv: CorpusView, precision: str, pp) -> str:
    try:
        return _pin_plan(cfg, out, info, cv, precision, pp)
    except OSError as e:
        raise StorageError(f"{out / PLAN}: cannot write: {e.strerror or e}") from None


def _pin_plan(cfg: Config, out: Path, info: CheckpointInfo, cv: CorpusView, precision: str, pp=None) -> str:
    """Pin (checkpoint, vocabulary, settings, resolved precision) in ``plan.json`` — created by the first
    task, atomically — or check that this task agrees with the pinned plan. A plan under which no recipe
    exists yet is stale (e.g. a job killed before its first recipe) and is replaced. Returns the
    precision to use: the pinned one, so tasks on different hardware still make one consistent set."""
    mine = {
        "checkpoint": {"step": info.step, "path": str(info.path)},
        "vocab_hash": cv.vocab_hash,
        "settings": generation_settings(cfg),
        "precision": precision,
    }
    if isinstance(pp, PromptSet):  # only then: a plan without prompts stays as it was
        mine["prompts"] = pp.record()
    path = out / PLAN
    theirs = read_json(path)
    if theirs is None:
        if create_exclusive(path, mine):
            return precision
        theirs = read_json(path) or {}

    def key(p: dict):
        return (p.get("checkpoint", {}).get("step"), p.get("vocab_hash"), p.get("settings"), p.get("prompts"))

    if key(theirs) == key(mine):
        return theirs.get("precision") or precision
    if not present_recipes(out):
        atomic_write_json(path, mine)
        return precision
    raise _plan_conflict(cfg, out, theirs, mine, cv)


def _plan_conflict(cfg: Config, out: Path, theirs: dict, mine: dict, cv: CorpusView) -> InputError:
    """The one-line refusal when ``out`` holds recipes made under another plan: what differs first."""
    step, my_step = theirs.get("checkpoint", {}).get("step"), mine["checkpoint"]["step"]
    if step != my_step:
        which = (
            f"generate.checkpoint is step {my_step}"
            if cfg.generate.checkpoint
            else f"the newest complete checkpoint is step {my_step}"
        )
        return InputError(
            f"{out}: holds recipes from checkpoint step {step}, but {which}: set "
            f"generate.checkpoint={step} to continue them, or choose another generate.name"
        )
    if theirs.get("vocab_hash") != cv.vocab_hash:
        return InputError(
            f"{out}: holds recipes made with vocabulary {str(theirs.get('vocab_hash'))[:12]}, the "
            f"corpus {cv.path} has {cv.vocab_hash[:12]}: choose another generate.name"
        )
    if theirs.get("prompts") != mine.get("prompts"):
        what = (theirs.get("prompts") or {}).get("source") or "generate.prompt"
        return InputError(
            f"{out}: holds recipes made from other prompts ({what}): choose another generate.name "
            f"(or remove the folder)"
        )
    old = theirs.get("settings") or {}
    name = settings_name(old, mine["settings"])
    name = name if out.name == DEFAULT_NAME else f"{out.name}-{name}"
    return InputError(
        f"{out}: holds recipes made with other settings ({settings_diff(old, mine['settings'])}): pass "
        f"generate.name={name} (or remove the folder)"
    )


def settings_diff(old: dict, new: dict) -> str:
    """The settings that differ, the folder's value first: ``generate.temperature=0.8 (config: 1.0)``. A
    setting one side does not record (named only when set, such as the biases) is its default there."""
    default = GenerateConfig()

    def value(d: dict, k: str):
        return d[k] if k in d else getattr(default, k, None)

    return "; ".join(
        f"generate.{k}={value(old, k)!r} (config: {value(new, k)!r})"
        if k != "sampler"
        else f"sampling rule version {old.get(k)!r} (this hpcrnn: {new.get(k)!r})"
        for k in dict.fromkeys([*new, *old])
        if value(old, k) != value(new, k)
    )


def _resolve_folder(cfg: Config) -> Config:
    """``cfg`` with ``generate.name`` the folder it writes to (:func:`hpcrnn.run.generated.output_name`),
    saying so in one line when the default name gave way to a name derived from the settings."""
    old = default_conflict(cfg)
    if old is None:
        return cfg
    name = output_name(cfg)
    _log(
        f"generated/{DEFAULT_NAME}/ holds recipes made with other settings "
        f"({settings_diff(old, generation_settings(cfg))}): writing generated/{name}/ "
        f"(generate.name={name}; give generate.name to choose the folder)"
    )
    return dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, name=name))


def run_generate(cfg: Config, shard: int = 0, num_shards: int = 1) -> GenerateResult:
    """Generate this shard's recipes (all of them with the defaults); merge when all are present."""
    _check_shard(cfg, shard, num_shards)
    cfg = _resolve_folder(cfg)
    out = output_dir(cfg)
    keep_freed_memory()  # see hpcrnn/process.py: otherwise every decoding step page-faults its tensors
    src = _open_source(cfg, out)
    mine = shard_recipes(recipe_count(cfg, src.prompt), shard, num_shards)
    remove_own_temporaries(out, set(mine))
    present = present_recipes(out)
    todo = [i for i in mine if i not in present]
    written = tokens = 0
    seconds = 0.0
    qc: QualityContext | None = None
    if todo:
        qc = build_quality_context(src.cv, cfg.data.seed)
        what = f"shard {shard + 1}/{num_shards}: {len(todo)} recipes to write ({len(mine) - len(todo)} present)"
        written, tokens, seconds = _write_shard(cfg, src, out, todo, shard_index_name(shard, num_shards), qc, what)
        _log(
            f"shard {shard + 1}/{num_shards}: wrote {written} recipes, {tokens:,} tokens in "
            f"{seconds:.1f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s)"
        )
    complete = merge(cfg, out, src.info, src.cv, qc, src.prompt)
    return GenerateResult(
        out,
        shard,
        num_shards,
        len(mine),
        written,
        len(mine) - len(todo),
        tokens,
        seconds,
        tokens / seconds if seconds > 0 else 0.0,
        complete,
        src.info.step,
    )


def _write_shard(
    cfg: Config, src: _Source, out: Path, todo: list[int], index_name: str, qc: QualityContext, what: str
) -> tuple[int, int, float]:
    """Generate, describe and write recipes ``todo``: returns (recipes written, tokens, seconds). ``what``
    opens the log line."""
    cpus = available_cpus()
    workers = quality_workers(src.device, cpus)
    threads = torch_threads(src.device, cpus, workers, cfg.train.threads)
    with ExitStack() as undo:  # in reverse order, each step even when one before it fails
        undo.callback(torch.set_num_threads, torch.get_num_threads())  # a library call keeps its caller's
        torch.set_num_threads(threads)
        describer = Describer(src.cv, qc, workers)  # forks (if at all) before CUDA starts
        undo.callback(describer.close)
        writer = RecipeWriter(partial(_write_one, cfg, src, out, index_name))
        writer.start()
        undo.callback(writer.close)  # the recipes already generated still reach the disk
        _log(
            f"{what} with checkpoint step {src.info.step} on {src.device} ({src.precision} products, "
            f"{threads} torch threads), {min(cfg.generate.batch_size, len(todo))} slots, "
            f"{workers or 'no'} describing worker(s)"
        )
        return _decode(cfg, src, todo, describer, writer)


def _decode(
    cfg: Config, src: _Source, todo: list[int], describer: Describer, writer: RecipeWriter
) -> tuple[int, int, float]:
    """The decoding loop: each finished recipe goes to the describer and the writer thread at once."""
    model = src.model.to(src.device)
    written = tokens = 0
    t0 = time.perf_counter()
    meter = Meter("hpcrnn.generate", len(todo), "recipes")
    for i, shown, toks, stopped in decode_recipes(cfg, src.cv, model, src.prompt, todo, src.device, src.precision):
        tokens += len(toks) + int(stopped)
        written += 1
        listed = src.prompt.entry(i).listed if isinstance(src.prompt, PromptSet) else None
        writer.put((i, len(shown), toks, stopped, describer.submit(shown, toks, listed)))
        meter.update(written, f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f} tokens/s")
    meter.finish()
    return written, tokens, time.perf_counter() - t0


def decode_recipes(
    cfg: Config, cv: CorpusView, model, pp: PromptPlan | PromptSet, todo: list[int], device, precision: str
) -> Iterator[tuple[int, list[int], list[int], bool]]:
    """Recipes ``todo`` as they finish: (number, shown prompt ids, generated ids, stopped at the end of the
    recipe). The job's decoding, and ``hpcrnn.load(...).generate``'s, so both make the same recipes."""
    g = cfg.generate
    hidden_of: dict[int, int] = {}
    prompts: dict[int, list[int]] = {}
    words = ingredient_words(cv, cfg.data.seed) if g.unlisted_bias else frozenset()
    texts = [p.fixed for p in (pp.plans if isinstance(pp, PromptSet) else [pp]) if p.kind == "text"]
    lex = decoding_lexicon(
        g, cv.vocab, cv.tokenizer, words, device, texts, lambda: ingredient_openers(cv, cfg.data.seed)
    )

    def jobs():
        for i in todo:
            job, hidden = make_job(i, cfg, cv, pp)
            hidden_of[i] = hidden
            prompts[i] = job.prompt
            yield job

    for i, toks, stopped in generate_batched(
        model,
        jobs(),
        batch_size=g.batch_size,
        max_tokens=g.max_tokens,
        stop_id=cv.stop_id,
        temperature=g.temperature,
        top_k=g.top_k,
        top_p=g.top_p,
        banned=[cv.unk_id],
        device=device,
        precision=precision,
        memory=prompt_ring(pp, g.max_tokens),
        lexicon=lex,
    ):
        yield i, prompts.pop(i)[hidden_of.pop(i) :], toks, stopped


def _write_one(cfg: Config, src: _Source, out: Path, index_name: str, item: tuple) -> None:
    """In the writer thread: one recipe's file and index line."""
    i, n_shown, toks, stopped, described = item
    text, title, quality = described()
    g = cfg.generate
    record = {
        "title": title,
        "tokens": len(toks),
        "prompt_tokens": n_shown,
        "stopped": "eor" if stopped else "max_tokens",
        "seed": g.seed,
        "stream": [g.seed, i],
        "checkpoint_step": src.info.step,
        "prompt": g.prompt,
        "sampling": {
            "temperature": g.temperature,
            "top_k": g.top_k,
            "top_p": g.top_p,
            "max_tokens": g.max_tokens,
            **{k: getattr(g, k) for k in ("listed_bias", "unlisted_bias") if getattr(g, k)},  # set: recorded
        },
        "precision": src.precision,
        "quality": quality,
    }
    if isinstance(src.prompt, PromptSet):
        entry = src.prompt.entry(i)
        record["prompt"] = src.prompt.source
        record["prompt_number"], record["prompt_title"] = entry.number, entry.title
    write_recipe(out, index_name, i, text, record)


def merge(
    cfg: Config, out: Path, info: CheckpointInfo, cv: CorpusView, qc: QualityContext | None = None, pp=None
) -> bool:
    """Write index.jsonl and summary.json once every recipe 1..N is present. Deterministic content, so
    two tasks that both see the set complete write the same bytes (each atomically)."""
    n = recipe_count(cfg, pp)
    present = present_recipes(out)
    if any(i not in present for i in range(1, n + 1)):
        return False
    records = [present[i] for i in range(1, n + 1)]
    qc = qc or build_quality_context(cv, cfg.data.seed)
    write_merged(out, records, job_summary(cfg, info, cv, qc, records, pp))
    _log(f"{out}: all {n} recipes present; wrote index.jsonl and {SUMMARY}")
    return True


def _cli(cfg: Config, args) -> GenerateResult:
    shard = 0 if args.shard is None else args.shard
    return run_generate(cfg, shard=shard, num_shards=args.num_shards)


def main(argv: list[str] | None = None) -> int:
    p = make_parser("hpcrnn.generate", "Generate recipes from the newest complete checkpoint of a run.")
    p.add_argument("--shard", type=int, default=None, help="this task's shard, 0-based (default 0)")
    p.add_argument(
        "--num-shards",
        type=int,
        default=1,
        help="how many tasks share the recipes (default 1: this process writes them all)",
    )
    return run_cli(p, _cli, argv)
