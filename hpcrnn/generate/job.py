"""The generation job: many recipes from a trained checkpoint, batched, reproducible, resumable.

    python -m hpcrnn.generate CONFIG [key=value ...] [--shard S --num-shards N]

What it does (``run_generate``):

* Loads the newest *complete* checkpoint of the run (or ``generate.checkpoint``: a step number or a
  folder) and refuses one whose vocabulary hash differs from the corpus'.
* Generates ``generate.num_recipes`` recipes with a fixed number of *slots* (``generate.batch_size``)
  by continuous batched decoding (:mod:`hpcrnn.generate.decode`): every step feeds one token per slot through
  :class:`hpcrnn.generate.stepper.Stepper`, carrying the recurrent state — the lecture instead re-ran the whole
  50-word window through the network for every new word, one recipe at a time.
* Sampling (:mod:`hpcrnn.generate.sampling`): ``temperature`` 0 is greedy argmax (the lecture's choice); otherwise
  softmax at that temperature, restricted to the ``top_k`` most likely tokens (0: all) and then to the
  smallest set whose probability reaches ``top_p`` (ties at the edge kept), drawn by rejection rather than
  by sorting the vocabulary. The unknown-word token is never sampled (the model would write ``<unk>``).
  Generation of a recipe stops at the end-of-recipe token (not written) or at ``max_tokens``.
* Precision (``generate.precision``): the matrix products — most of a step's arithmetic — take bf16
  inputs and sum in fp32 where the hardware multiplies bf16 natively (``auto``: CUDA, CPUs with AMX), as
  ``torch.autocast`` does, fp32 otherwise; the input table, the recurrent state and sampling stay fp32.
  ``auto`` is resolved by the first task and pinned in ``plan.json``.
* Reproducibility: recipe *i* draws its random numbers from its own stream seeded with
  ``(generate.seed, i)`` — per generated token one uniform (``ROUNDS`` when top_k/top_p truncate: one per
  rejection draw), consumed by inverse-CDF sampling — so the same seed and checkpoint give the same files
  whatever the batch size, shard count or order (tested on CPU; on a GPU the matrix kernels may change
  with the batch shape, and a last-bit difference in the logits can, rarely, change a sampled token).
  ``SAMPLER`` (the sampling rule's version) is part of the pinned settings, so a folder is never
  continued by a different rule.
* Priming (``generate.prompt``):
    - ``""`` (default): the start of a recipe — the end-of-recipe token (what precedes every recipe in the
      training stream), followed by the tokens of ``Title:`` when most training documents begin with them
      (the MealMaster layout), so the model writes a title next;
    - any text, tokenized like the corpus: a one-line prompt is a title (``Chocolate Cake`` is fed as
      ``Title: Chocolate Cake`` and a newline); a prompt with newlines is fed verbatim after the
      end-of-recipe token. A prompt whose words are all unknown to the vocabulary is refused;
    - ``random``: the lecture's seed — a random window of ``data.window`` tokens from the test split
      (val, then train, when the test split is empty), drawn from the recipe's own stream, fed from a zero
      state.
  The prompt is part of the written text; quality figures that count tokens (repetition, novelty) count
  the generated tokens only.
* Output ``<run dir>/generated/<generate.name>/``: ``recipe-00001.txt`` …, each written atomically, and
  per shard an append-only ``index-<s>-of-<n>.jsonl`` (one line per recipe, written after its file).
  ``plan.json`` (created exclusively by the first task) pins the checkpoint and the sampling settings, so
  concurrent array tasks and reruns agree or refuse with one line: recipes made from checkpoint step N
  are never mixed with another step's (a newer checkpoint asks for ``generate.checkpoint=N`` to finish
  them or another ``generate.name``); a plan under which no recipe exists yet is simply replaced. When every recipe 1..N is present,
  the task that notices writes ``index.jsonl`` (all recipes, in order) and ``summary.json`` (generated
  figures beside the same figures of a sample of real test-split recipes); both are deterministic, so two
  tasks finishing together write the same bytes, atomically.
* Each finished recipe is detokenized, scored (``hpcrnn.generate.quality``) and written off the generation loop:
  in forked worker processes (a writer thread with one CPU; see :func:`quality_workers`).
* Whitespace-tokenized corpora have no end-of-recipe token: their recipes run to ``max_tokens`` and
  start after an end-of-line token.
* Shards: shard ``s`` of ``n`` writes recipes ``i`` with ``(i - 1) % n == s``. A rerun skips every
  recipe whose index line and file exist (from any shard layout), so a killed job continues where it
  stopped and never leaves a half file.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hpcrnn.config import Config
from hpcrnn.errors import EXIT_OK, ConfigError, HpcrnnError, InputError
from hpcrnn.fsutil import atomic_write_json, atomic_write_text, fsync_dir
from hpcrnn.generate.decode import Job, generate_batched
from hpcrnn.generate.memory import keep_freed_memory
from hpcrnn.generate.sampling import uniforms_per_token
from hpcrnn.generate.stepper import resolve_precision

PLAN = "plan.json"
INDEX = "index.jsonl"
SUMMARY = "summary.json"
TITLE_TEXT = "Title:"  # the opening of a recipe in the MealMaster layout
SAMPLER = 2  # version of the sampling rule (2: rejection for top_k/top_p, vocabulary order, fused step)
INGREDIENT_SAMPLE = 2000  # training recipes read to derive the ingredient words (a seeded sample)


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


def output_dir(cfg: Config) -> Path:
    return cfg.run_dir / "generated" / cfg.generate.name


def shard_index_name(shard: int, num_shards: int) -> str:
    return f"index-{shard + 1:05d}-of-{num_shards:05d}.jsonl"


def recipe_file_name(i: int) -> str:
    return f"recipe-{i:05d}.txt"


def shard_recipes(num_recipes: int, shard: int, num_shards: int) -> list[int]:
    """Recipe numbers (1-based) of one shard: i with (i - 1) % num_shards == shard."""
    return list(range(shard + 1, num_recipes + 1, num_shards))


def settings_of(cfg: Config) -> dict:
    """The settings that decide the content of the recipes (not batch size, shards or device)."""
    g = cfg.generate
    return {
        "seed": g.seed,
        "temperature": g.temperature,
        "top_k": g.top_k,
        "top_p": g.top_p,
        "max_tokens": g.max_tokens,
        "prompt": g.prompt,
        "precision": g.precision,
        "sampler": SAMPLER,
    }


def _warn(msg: str) -> None:
    print(f"hpcrnn.generate: warning: {msg}", file=sys.stderr, flush=True)


def _log(msg: str) -> None:
    print(f"hpcrnn.generate: {msg}", flush=True)


# ------------------------------------------------------------------------------------ sampling


def recipe_rng(seed: int, i: int) -> np.random.Generator:
    """The random stream of recipe ``i``: independent of batch size, shards and order."""
    return np.random.default_rng([seed % 2**64, i])


# ------------------------------------------------------------------------------------ corpus side


@dataclass
class CorpusView:
    """What generation needs from the corpus: the stream, document bounds and splits, the vocabulary."""

    path: Path
    vocab: list[str]
    vocab_hash: str
    stoi: dict
    unk_id: int
    eor_id: int | None  # None for whitespace corpora: their documents end with no special token
    boundary_id: int  # what precedes a document in the stream: EOR, else EOS (end of the last line)
    tokenizer: str
    window: int
    tokens: np.ndarray
    starts: np.ndarray  # document start offsets
    ends: np.ndarray  # document ends, the closing end-of-recipe token excluded
    split: np.ndarray  # 0 train, 1 val, 2 test per document

    @classmethod
    def open(cls, path: Path) -> CorpusView:
        from hpcrnn.data.build import open_corpus

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: corpus not found (run the preprocess stage first)")
        c = open_corpus(path)
        tokens = np.asarray(c.tokens())
        starts = np.asarray(c.documents(), dtype=np.int64)
        if len(starts) and starts[-1] == len(tokens):  # a trailing end offset, if the format keeps one
            starts = starts[:-1]
        nxt = np.append(starts[1:], len(tokens)).astype(np.int64)
        eor = None if c.eor_id is None else int(c.eor_id)
        ends = nxt.copy()
        if len(ends) and eor is not None:
            closing = tokens[np.maximum(nxt - 1, 0)] == eor
            ends[closing & (nxt > starts)] -= 1
        boundary = eor if eor is not None else (c.eos_id if c.eos_id is not None else c.unk_id)
        return cls(
            path,
            list(c.vocab),
            str(c.vocab_hash),
            dict(c.stoi),
            int(c.unk_id),
            eor,
            int(boundary),
            str(c.tokenizer),
            int(c.window),
            tokens,
            starts,
            ends,
            np.asarray(c.document_split(), dtype=np.int64),
        )

    @property
    def stop_id(self) -> int:
        return self.eor_id if self.eor_id is not None else -1  # -1: never sampled, run to max_tokens

    def ids(self, toks: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, self.unk_id) for t in toks]

    def text(self, ids: Sequence[int]) -> str:
        from hpcrnn.text.tokenize import detokenize

        return detokenize([self.vocab[i] for i in ids], self.tokenizer)

    def docs(self, split: int) -> np.ndarray:
        return np.nonzero(self.split == split)[0]

    def split_stream(self, split: int) -> np.ndarray:
        """The token stream of one split's documents; documents that are not adjacent are joined by a
        separator outside the vocabulary, so no copied run crosses a gap."""
        d = self.docs(split)
        if len(d) == 0:
            return np.zeros(0, dtype=np.int64)
        lo, hi = self.starts[d], np.append(self.starts[1:], len(self.tokens))[d]
        if np.all(lo[1:] == hi[:-1]):
            return np.asarray(self.tokens[lo[0] : hi[-1]])
        sep = np.array([len(self.vocab)], dtype=np.int64)
        parts = []
        for a, z in zip(lo, hi):
            parts += [self.tokens[a:z].astype(np.int64), sep]
        return np.concatenate(parts)

    def split_region(self, split: int) -> tuple[int, int] | None:
        """(lo, hi) of the tokens of one split when they are contiguous (as the corpus lays them out)."""
        d = self.docs(split)
        if len(d) == 0:
            return None
        hi_all = np.append(self.starts[1:], len(self.tokens))
        return int(self.starts[d[0]]), int(hi_all[d[-1]])

    def start_prefix(self) -> list[int]:
        """The tokens of ``Title:`` when most training documents begin with them, else []."""
        from hpcrnn.text.tokenize import tokenize

        ids = self.ids(tokenize(TITLE_TEXT, self.tokenizer))
        # whitespace tokenization closes the line with EOS; only the words open a document
        ids = [i for i in ids if self.vocab[i] not in ("<eos>",)]
        if not ids or self.unk_id in ids:
            return []
        d = self.docs(0)
        if len(d) == 0:
            return []
        s = self.starts[d]
        s = s[s + len(ids) <= len(self.tokens)]
        hits = np.ones(len(s), dtype=bool)
        for k, t in enumerate(ids):
            hits &= self.tokens[s + k] == t
        return ids if len(s) and hits.mean() > 0.5 else []


# ------------------------------------------------------------------------------------ prompts


@dataclass
class PromptPlan:
    kind: str  # "start" | "text" | "random"
    fixed: list[int] = field(default_factory=list)  # fed for start/text
    shown_from: int = 0  # fixed[shown_from:] belongs to the recipe text (the leading EOR does not)
    region: tuple[int, int] | None = None  # random: where windows are drawn
    window: int = 0


def plan_prompt(cfg: Config, cv: CorpusView) -> PromptPlan:
    from hpcrnn.text.tokenize import tokenize

    p = cfg.generate.prompt
    if p == "random":
        w = cv.window
        for split, name in ((2, "test"), (1, "val"), (0, "train")):
            reg = cv.split_region(split)
            if reg and reg[1] - reg[0] >= w:
                if split != 2:
                    _warn(
                        f"generate.prompt: random: the test split of {cv.path} is too small for a "
                        f"{w}-token window; drawing from the {name} split"
                    )
                return PromptPlan("random", region=reg, window=w)
        raise InputError(f"{cv.path}: generate.prompt: random needs {w} tokens of text, the corpus has fewer")
    prefix = cv.start_prefix()
    if not p.strip():
        return PromptPlan("start", fixed=[cv.boundary_id] + prefix, shown_from=1)
    one_line = "\n" not in p.strip("\n")
    text = p.strip("\n") + "\n" if one_line else p
    toks = tokenize(text, cv.tokenizer)
    own = cv.ids(toks)
    # words: what is neither white space nor a special token (the char tokenizer knows the space)
    words = [i for t, i in zip(toks, own) if t.strip() and t not in ("<eos>", "<eor>")]
    if not words or all(i == cv.unk_id for i in words):
        raise InputError(f"generate.prompt: {p!r}: every word is unknown to the vocabulary of {cv.path}")
    unknown = [t for t, i in zip(toks, own) if i == cv.unk_id]
    if unknown:
        _warn(f"generate.prompt: unknown to the vocabulary, fed as <unk>: {', '.join(unknown[:10])}")
    if one_line and prefix and own[: len(prefix)] != prefix:
        own = cv.ids(tokenize(f"{TITLE_TEXT} {text}", cv.tokenizer))  # a one-line prompt is a title
    return PromptPlan("text", fixed=[cv.boundary_id] + own, shown_from=1)


def make_job(i: int, cfg: Config, cv: CorpusView, pp: PromptPlan) -> tuple[Job, int]:
    """Recipe i's job and how many leading prompt tokens are hidden from its text."""
    g = cfg.generate
    rng = recipe_rng(g.seed, i)
    if pp.kind == "random":
        lo, hi = pp.region
        off = int(rng.integers(lo, hi - pp.window + 1))
        prompt, hidden = cv.tokens[off : off + pp.window].astype(np.int64).tolist(), 0
    else:
        prompt, hidden = list(pp.fixed), pp.shown_from
    u = (
        None
        if g.temperature == 0.0
        else rng.random((g.max_tokens, uniforms_per_token(g.top_k, g.top_p)), dtype=np.float32)
    )
    return Job(i, prompt, u), hidden


# ------------------------------------------------------------------------------------ quality context


@dataclass
class QualityContext:
    ingredient_words: frozenset
    index: object  # quality.CopyIndex over the train stream
    train_tokens: int


def build_quality_context(cv: CorpusView, seed: int = 0) -> QualityContext:
    from hpcrnn.generate import quality as Q

    t0 = time.time()
    train = cv.docs(0)
    rng = np.random.default_rng([seed % 2**64, 0x1E5])
    pick = train if len(train) <= INGREDIENT_SAMPLE else np.sort(rng.choice(train, INGREDIENT_SAMPLE, replace=False))
    parsed = [Q.parse_recipe(cv.text(cv.tokens[cv.starts[d] : cv.ends[d]].tolist())) for d in pick]
    words = Q.build_ingredient_words(parsed)
    stream = cv.split_stream(0)
    index = Q.CopyIndex(stream, len(cv.vocab))
    _log(
        f"quality: {len(words)} ingredient words from {len(pick)} training recipes, copy index over "
        f"{len(stream):,} training tokens ({time.time() - t0:.1f} s)"
    )
    return QualityContext(words, index, len(stream))


def real_sample_quality(cv: CorpusView, qc: QualityContext, n: int, seed: int) -> tuple[list[dict], list[int]]:
    """The figures of up to ``n`` test-split recipes (a fixed sample: the same for every generation)."""
    from hpcrnn.generate import quality as Q

    test = cv.docs(2)
    if n <= 0 or len(test) == 0:
        return [], []
    rng = np.random.default_rng([seed % 2**64, 0x7E57])
    pick = test if len(test) <= n else np.sort(rng.choice(test, n, replace=False))
    out, lengths = [], []
    for d in pick:
        ids = cv.tokens[cv.starts[d] : cv.ends[d]].tolist()
        out.append(Q.recipe_quality(cv.text(ids), ids, qc.ingredient_words, qc.index))
        lengths.append(len(ids))
    return out, lengths


# ------------------------------------------------------------------------------------ files


def _read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Records of a JSON-lines file and the byte length of its valid prefix (a killed writer may leave a
    torn last line, which is ignored here and cut off before the next append)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    out, good = [], 0
    pos = 0
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is incomplete
        end = pos + len(line) + 1
        try:
            rec = json.loads(line)
            if isinstance(rec, dict) and isinstance(rec.get("recipe"), int):
                out.append(rec)
                good = end
        except ValueError:
            pass
        pos = end
    return out, good


def present_recipes(out: Path) -> dict[int, dict]:
    """Recipes with an index line (any shard file) and their file on disk."""
    found: dict[int, dict] = {}
    for p in sorted(out.glob("index-*-of-*.jsonl")):
        for rec in _read_jsonl(p)[0]:
            i = rec["recipe"]
            if i not in found and (out / recipe_file_name(i)).is_file():
                found[i] = rec
    return found


class _Appender:
    """This shard's index file, opened for appending after cutting a torn tail."""

    def __init__(self, path: Path):
        recs, good = _read_jsonl(path)
        if path.exists() and path.stat().st_size != good:
            with open(path, "r+b") as f:
                f.truncate(good)
        self.f = open(path, "a", encoding="utf-8")

    def append(self, rec: dict) -> None:
        self.f.write(json.dumps(rec, sort_keys=True) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _create_exclusive(path: Path, obj: dict) -> bool:
    """Write ``path`` only if it does not exist yet, atomically (a temporary file hard-linked into place:
    the link fails when another task got there first). True when this call created it."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then the content
            try:
                fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd2, "wb") as f:
                f.write(Path(tmp).read_bytes())
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(path.parent)
        return True
    finally:
        os.unlink(tmp)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e.__class__.__name__}: {e})") from None


# The context of the describing step, set before worker processes fork (they inherit it, index included,
# without a copy) and read by describe_recipe in whichever process runs it.
_DESCRIBE_CTX: tuple | None = None


def describe_recipe(shown: list[int], toks: list[int]) -> tuple[str, str | None, dict]:
    """(text, title, quality figures) of one recipe: its shown prompt ids and its generated ids."""
    from hpcrnn.generate import quality as Q
    from hpcrnn.text.tokenize import detokenize

    vocab, tokenizer, words, index = _DESCRIBE_CTX
    text = detokenize([vocab[i] for i in shown + toks], tokenizer)
    if not text.endswith("\n"):
        text += "\n"
    return text, Q.parse_recipe(text).title, Q.recipe_quality(text, toks, words, index)


def available_cpus() -> int:
    """The CPUs this task may use: Slurm's allocation, else the affinity mask."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def quality_workers(device: torch.device, cpus: int) -> int:
    """Worker processes for describing recipes (detokenizing, parsing, the novelty search: ~60k tokens/s
    a core), forked before the generation loop starts.

    In a thread of the generating process, describing holds the GIL against the loop (Python launching
    torch ops) and, on a CPU, steals a core from torch's threads, which then wait for each other in every
    parallel op. So on a GPU spare CPUs take it (up to 8); on a CPU a quarter of the CPUs do (at least
    one, given two CPUs), and torch gets the rest (see ``run_generate``). On the 2-core VM, 2,000 recipes
    end to end: 21-26k tokens/s with the writer thread and two torch threads, 24-31k with one worker and
    one torch thread (runs of each, 2026-11-26). One CPU: the writer thread. ``HPCRNN_QUALITY_WORKERS``
    overrides (0: the writer thread)."""
    env = os.environ.get("HPCRNN_QUALITY_WORKERS", "")
    if env.strip().isdigit():
        return int(env)
    if device.type == "cuda":
        return max(0, min(8, cpus - 1))
    return 0 if cpus < 2 else max(1, min(8, cpus // 4))


class _Describer:
    def __init__(self, cv: CorpusView, qc: QualityContext, workers: int):
        global _DESCRIBE_CTX
        _DESCRIBE_CTX = (cv.vocab, cv.tokenizer, qc.ingredient_words, qc.index)
        self.pool = None
        if workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            self.pool.submit(int).result()  # fork the workers now, before this process initialises CUDA

    def submit(self, shown: list[int], toks: list[int]) -> Callable[[], tuple]:
        """A thunk the writer thread calls for the result (computed there, or awaited from a worker)."""
        if self.pool is None:
            return lambda: describe_recipe(shown, toks)
        return self.pool.submit(describe_recipe, shown, toks).result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _Writer(threading.Thread):
    """Writes finished recipes (text, quality, file, index line) off the generation loop."""

    def __init__(self, handle: Callable[[tuple], None]):
        super().__init__(daemon=True, name="hpcrnn-generate-writer")
        self.handle = handle
        self.q: queue.Queue = queue.Queue(maxsize=1024)
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain after a failure
            try:
                self.handle(item)
            except BaseException as e:  # reported by put()/close() in the main thread
                self.error = e

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def close(self) -> None:
        self.q.put(None)
        self.join()
        if self.error is not None:
            raise self.error


# ------------------------------------------------------------------------------------ the job


def _device(cfg: Config) -> torch.device:
    want = cfg.generate.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.source}: generate.device: cuda requested but no GPU is visible")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def _check(cfg: Config, shard: int, num_shards: int) -> None:
    g, src = cfg.generate, cfg.source or "<config>"
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError(f"{src}: num_shards: {num_shards!r} must be a positive integer")
    if not isinstance(shard, int) or not 0 <= shard < num_shards:
        raise ConfigError(f"{src}: shard: {shard!r} must be in 0..{num_shards - 1}")
    if not 0.0 < g.top_p <= 1.0:
        raise ConfigError(f"{src}: generate.top_p: {g.top_p!r} must be in (0, 1]")
    if g.temperature < 0:
        raise ConfigError(f"{src}: generate.temperature: {g.temperature!r} must be >= 0")
    if g.top_k < 0 or g.max_tokens < 1 or g.batch_size < 1 or g.num_recipes < 1:
        raise ConfigError(f"{src}: generate: top_k >= 0, max_tokens, batch_size and num_recipes >= 1 required")


def _agree_plan(cfg: Config, out: Path, info, cv: CorpusView, precision: str) -> str:
    """Pin (checkpoint, vocabulary, settings, resolved precision) in ``plan.json`` — created by the first
    task, atomically — or check that this task agrees with the pinned plan. A plan under which no recipe
    exists yet is stale (e.g. a job killed before its first recipe) and is replaced. Returns the
    precision to use: the pinned one, so tasks on different hardware still make one consistent set."""
    mine = {
        "checkpoint": {"step": info.step, "path": str(info.path)},
        "vocab_hash": cv.vocab_hash,
        "settings": settings_of(cfg),
        "precision": precision,
    }
    path = out / PLAN
    theirs = _read_json(path)
    if theirs is None:
        if _create_exclusive(path, mine):
            return precision
        theirs = _read_json(path) or {}

    def key(p: dict):
        return (p.get("checkpoint", {}).get("step"), p.get("vocab_hash"), p.get("settings"))

    if key(theirs) == key(mine):
        return theirs.get("precision") or precision
    if not present_recipes(out):
        atomic_write_json(path, mine)
        return precision
    step = theirs.get("checkpoint", {}).get("step")
    if step != info.step:
        which = (
            f"generate.checkpoint is step {info.step}"
            if cfg.generate.checkpoint
            else f"the newest complete checkpoint is step {info.step}"
        )
        raise InputError(
            f"{out}: holds recipes from checkpoint step {step}, but {which}: set "
            f"generate.checkpoint={step} to continue them, or choose another generate.name"
        )
    if theirs.get("vocab_hash") != cv.vocab_hash:
        raise InputError(
            f"{out}: holds recipes made with vocabulary {str(theirs.get('vocab_hash'))[:12]}, the "
            f"corpus {cv.path} has {cv.vocab_hash[:12]}: choose another generate.name"
        )
    old = theirs.get("settings") or {}
    diff = [
        f"generate.{k}={old.get(k)!r} (config: {v!r})"
        if k != "sampler"
        else f"sampling rule version {old.get(k)!r} (this hpcrnn: {v!r})"
        for k, v in mine["settings"].items()
        if old.get(k) != v
    ]
    raise InputError(
        f"{out}: holds recipes made with other settings ({'; '.join(diff)}): choose another "
        f"generate.name or remove the folder"
    )


def _remove_own_temporaries(out: Path, mine: set[int]) -> None:
    """Delete the temporaries a killed writer of this shard's recipes left (``.recipe-00004.txt.*.tmp``):
    only this shard writes those recipes, so no live writer owns them."""
    for p in out.glob(".recipe-*.txt.*.tmp"):
        try:
            i = int(p.name[len(".recipe-") :].split(".", 1)[0])
        except ValueError:
            continue
        if i in mine:
            p.unlink(missing_ok=True)


def run_generate(cfg: Config, shard: int = 0, num_shards: int = 1) -> GenerateResult:
    """Generate this shard's recipes (all of them with the defaults); merge when all are present."""
    from hpcrnn.train import checkpoint as ckpt

    _check(cfg, shard, num_shards)
    g = cfg.generate
    out = output_dir(cfg)
    keep_freed_memory()  # see hpcrnn/memory.py: otherwise every decoding step page-faults its tensors

    cv = CorpusView.open(cfg.h5_path)
    pp = plan_prompt(cfg, cv)  # a bad prompt fails before anything is loaded or written
    # read the weights right away: a trainer beside us may delete this checkpoint (retention) at any time;
    # open_latest picks again if it vanished between choosing and reading
    info, loaded, meta = ckpt.open_latest(cfg.checkpoint_dir, cfg.generate.checkpoint, "cpu")
    if meta.get("vocab_hash") != cv.vocab_hash:
        raise InputError(
            f"{info.path}: checkpoint vocabulary {str(meta.get('vocab_hash'))[:12]} does not match "
            f"the corpus {cv.path} ({cv.vocab_hash[:12]})"
        )
    if int(meta.get("vocab_size", -1)) != len(cv.vocab):
        raise InputError(
            f"{info.path}: checkpoint vocabulary size {meta.get('vocab_size')} != corpus {len(cv.vocab)} ({cv.path})"
        )
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    precision = _agree_plan(cfg, out, info, cv, resolve_precision(g.precision, device))

    mine = shard_recipes(g.num_recipes, shard, num_shards)
    _remove_own_temporaries(out, set(mine))
    present = present_recipes(out)
    todo = [i for i in mine if i not in present]
    skipped = len(mine) - len(todo)
    written = tokens_total = 0
    seconds = 0.0
    qc: QualityContext | None = None
    if todo:
        qc = build_quality_context(cv, cfg.data.seed)
        cpus = available_cpus()
        workers = quality_workers(device, cpus)
        # torch's threads: the CPUs the describing workers leave (train.threads overrides)
        threads = cfg.train.threads or (max(1, cpus - workers) if device.type == "cpu" else cpus)
        previous_threads = torch.get_num_threads()  # restored at the end: a library call keeps its caller's
        torch.set_num_threads(threads)
        describer = _Describer(cv, qc, workers)  # forks (if at all) before CUDA starts
        model = loaded.to(device)
        sampling = {"temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p, "max_tokens": g.max_tokens}
        hidden_of: dict[int, int] = {}
        prompts: dict[int, list[int]] = {}

        def jobs():
            for i in todo:
                job, hidden = make_job(i, cfg, cv, pp)
                hidden_of[i] = hidden
                prompts[i] = job.prompt
                yield job

        appender = _Appender(out / shard_index_name(shard, num_shards))

        def write(item):
            i, n_shown, toks, stopped, result = item
            text, title, q = result()
            path = out / recipe_file_name(i)
            try:
                atomic_write_text(path, text)
                appender.append(
                    {
                        "recipe": i,
                        "file": path.name,
                        "title": title,
                        "tokens": len(toks),
                        "prompt_tokens": n_shown,
                        "stopped": "eor" if stopped else "max_tokens",
                        "seed": g.seed,
                        "stream": [g.seed, i],
                        "checkpoint_step": info.step,
                        "prompt": g.prompt,
                        "sampling": sampling,
                        "precision": precision,
                        "quality": q,
                    }
                )
            except OSError as e:
                raise HpcrnnError(f"{path}: cannot write: {e.__class__.__name__}: {e}") from None

        writer = _Writer(write)
        writer.start()
        _log(
            f"shard {shard + 1}/{num_shards}: {len(todo)} recipes to write ({skipped} present) with "
            f"checkpoint step {info.step} on {device} ({precision} products, {threads} torch threads), "
            f"{min(g.batch_size, len(todo))} slots, {workers or 'no'} describing worker(s)"
        )
        t0 = time.perf_counter()
        try:
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
            ):
                tokens_total += len(toks) + int(stopped)
                written += 1
                shown = prompts.pop(i)[hidden_of.pop(i) :]
                writer.put((i, len(shown), toks, stopped, describer.submit(shown, toks)))
            seconds = time.perf_counter() - t0
        finally:
            try:
                writer.close()  # the recipes already generated still reach the disk
            finally:
                appender.close()
                describer.close()
                torch.set_num_threads(previous_threads)
        _log(
            f"shard {shard + 1}/{num_shards}: wrote {written} recipes, {tokens_total:,} tokens in "
            f"{seconds:.1f} s ({tokens_total / max(seconds, 1e-9):,.0f} tokens/s)"
        )

    complete = merge(cfg, out, info, cv, qc)
    return GenerateResult(
        out,
        shard,
        num_shards,
        len(mine),
        written,
        skipped,
        tokens_total,
        seconds,
        tokens_total / seconds if seconds > 0 else 0.0,
        complete,
        info.step,
    )


def merge(cfg: Config, out: Path, info, cv: CorpusView, qc: QualityContext | None = None) -> bool:
    """Write index.jsonl and summary.json once every recipe 1..N is present. Deterministic content, so
    two tasks that both see the set complete write the same bytes (each atomically)."""
    from hpcrnn.generate import quality as Q

    g = cfg.generate
    present = present_recipes(out)
    if any(i not in present for i in range(1, g.num_recipes + 1)):
        return False
    recs = [present[i] for i in range(1, g.num_recipes + 1)]
    if qc is None:
        qc = build_quality_context(cv, cfg.data.seed)
    real, real_len = real_sample_quality(cv, qc, g.quality_sample, cfg.data.seed)
    gen_summary = Q.summarize([r["quality"] for r in recs], [r["tokens"] for r in recs])
    gen_summary["stopped_at_end_of_recipe"] = round(sum(r["stopped"] == "eor" for r in recs) / len(recs), 4)
    summary = {
        "name": g.name,
        "run": cfg.run.name,
        "num_recipes": g.num_recipes,
        "checkpoint": {"step": info.step, "path": str(info.path)},
        "vocab_hash": cv.vocab_hash,
        "settings": settings_of(cfg),
        "precision": recs[0].get("precision"),
        "generated": gen_summary,
        "real_test_sample": Q.summarize(real, real_len),
        "ingredient_words": len(qc.ingredient_words),
        "train_tokens": qc.train_tokens,
        "definitions": {
            "structure": "has a title, at least one ingredient line and instructions (>= 5 words)",
            "coherence": "share of the distinct ingredient words named in the instructions that appear in "
            "the recipe's own ingredient lines (ingredient words: names in training ingredient "
            "lines, see hpcrnn/quality.py)",
            "repeated_4grams": "1 - distinct token 4-grams / token 4-grams (generated tokens only)",
            "longest_copy": "longest run of tokens copied verbatim from the training split's token stream "
            "(generated tokens only; whole recipe for real ones)",
        },
    }
    atomic_write_text(out / INDEX, "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))
    atomic_write_json(out / SUMMARY, summary)
    _log(f"{out}: all {g.num_recipes} recipes present; wrote {INDEX} and {SUMMARY}")
    return True


def generation_done(cfg: Config) -> bool:
    """Whether ``generated/<name>`` holds all ``num_recipes`` recipes of these settings and the
    checkpoint generation would use now, with its summary. Never raises."""
    try:
        out = output_dir(cfg)
        s = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
        if s.get("num_recipes") != cfg.generate.num_recipes or s.get("settings") != settings_of(cfg):
            return False
        from hpcrnn.train import checkpoint as ckpt

        info = ckpt.resolve(cfg.checkpoint_dir, cfg.generate.checkpoint)
        if info.step != s.get("checkpoint", {}).get("step"):
            return False
        return all((out / recipe_file_name(i)).is_file() for i in range(1, cfg.generate.num_recipes + 1))
    except Exception:
        return False


# ------------------------------------------------------------------------------------ shell


def _cli(cfg: Config, args) -> GenerateResult:
    shard = args.shard
    if shard is None:
        shard = 0
    return run_generate(cfg, shard=shard, num_shards=args.num_shards)


def main(argv: list[str] | None = None) -> int:
    from hpcrnn.cli import make_parser, run_cli

    p = make_parser("hpcrnn.generate", "Generate recipes from the newest complete checkpoint of a run.")
    p.add_argument("--shard", type=int, default=None, help="this task's shard, 0-based (default 0)")
    p.add_argument(
        "--num-shards",
        type=int,
        default=1,
        help="how many tasks share the recipes (default 1: this process writes them all)",
    )
    return run_cli(p, _cli, argv)
