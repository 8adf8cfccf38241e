"""Describing recipes off the generation loop: text, title and quality figures, for generated and real ones.

Each finished recipe is detokenized, parsed and scored (:mod:`hpcrnn.generate.quality`) in forked worker
processes, or in the writer thread when the task has one CPU (see :func:`quality_workers`); the writer
thread then writes it (:class:`RecipeWriter`), so the decoding loop never waits for a file.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from hpcrnn.generate import constrain as C
from hpcrnn.generate import quality as Q
from hpcrnn.generate.corpus_view import CorpusView
from hpcrnn.text.detokenize import detokenize
from hpcrnn.text.tokenize import tokenize

INGREDIENT_SAMPLE = 2000  # training recipes read to derive the ingredient words (a seeded sample)


def _log(msg: str) -> None:
    print(f"hpcrnn.generate: {msg}", flush=True)


@dataclass
class QualityContext:
    ingredient_words: frozenset
    index: Q.CopyIndex | None  # over the train split's token stream; None without the corpus text
    train_tokens: int


def build_quality_context(cv: CorpusView, seed: int = 0) -> QualityContext:
    """Ingredient words from a seeded sample of training recipes, and the copy index over the train split;
    neither without the corpus text (a model file): the figures that need them are then None."""
    t0 = time.time()
    if not cv.has_text:
        _log(f"quality: {cv.path} holds no corpus text: no ingredient words, no novelty, no real recipes")
        return QualityContext(frozenset(), None, 0)
    words = ingredient_words(cv, seed)
    stream = cv.split_stream(0)
    index = Q.CopyIndex(stream, len(cv.vocab))
    _log(
        f"quality: {len(words)} ingredient words from {_sample_size(cv)} training recipes, copy index over "
        f"{len(stream):,} training tokens ({time.time() - t0:.1f} s)"
    )
    return QualityContext(words, index, len(stream))


_WORDS: dict[tuple, frozenset] = {}  # per corpus and seed: the job's decoding and its figures derive them once


def _sample_size(cv: CorpusView) -> int:
    return min(len(cv.docs(0)), INGREDIENT_SAMPLE)


def ingredient_words(cv: CorpusView, seed: int = 0) -> frozenset:
    """The corpus' ingredient words (:func:`hpcrnn.generate.quality.build_ingredient_words`) from a seeded
    sample of training recipes; empty without the corpus text."""
    if not cv.has_text:
        return frozenset()
    key = _sample_key(cv, seed)
    if key not in _WORDS:
        pick = _training_sample(cv, seed)
        _WORDS[key] = Q.build_ingredient_words([Q.parse_recipe(cv.text(cv.doc_tokens(d))) for d in pick])
    return _WORDS[key]


def _sample_key(cv: CorpusView, seed: int) -> tuple:
    """What the seeded training sample (and so each table derived from it) depends on."""
    return (str(cv.path), cv.vocab_hash, len(cv.tokens), seed)


def _training_sample(cv: CorpusView, seed: int) -> np.ndarray:
    train = cv.docs(0)
    if len(train) <= INGREDIENT_SAMPLE:
        return train
    rng = np.random.default_rng([seed % 2**64, 0x1E5])
    return np.sort(rng.choice(train, INGREDIENT_SAMPLE, replace=False))


_OPENERS: dict[tuple, np.ndarray] = {}


def ingredient_openers(cv: CorpusView, seed: int = 0) -> np.ndarray:
    """:func:`hpcrnn.generate.constrain.ingredient_openers` of the corpus, counted over the same seeded
    sample of training recipes as the ingredient words; its fixed rule without the corpus text."""
    if not cv.has_text:
        return C.ingredient_openers(cv.vocab, None)
    key = _sample_key(cv, seed)
    if key not in _OPENERS:
        counts = C.line_starts(cv.vocab, (cv.doc_tokens(d) for d in _training_sample(cv, seed)))
        _OPENERS[key] = C.ingredient_openers(cv.vocab, counts)
    return _OPENERS[key]


def real_sample_quality(cv: CorpusView, qc: QualityContext, n: int, seed: int) -> tuple[list[dict], list[int]]:
    """The figures of up to ``n`` test-split recipes (a fixed sample: the same for every generation)."""
    test = cv.docs(2)
    if n <= 0 or len(test) == 0:
        return [], []
    rng = np.random.default_rng([seed % 2**64, 0x7E57])
    pick = test if len(test) <= n else np.sort(rng.choice(test, n, replace=False))
    out, lengths = [], []
    for d in pick:
        ids = cv.doc_tokens(d)
        out.append(Q.recipe_quality(cv.text(ids), ids, qc.ingredient_words, qc.index))
        lengths.append(len(ids))
    return out, lengths


# The context of the describing step, set before worker processes fork (they inherit it, index included,
# without a copy) and read by describe_recipe in whichever process runs it.
_DESCRIBE_CTX: tuple | None = None


def describe_recipe(shown: list[int], toks: list[int], listed: list[str] | None = None) -> tuple[str, str | None, dict]:
    """(text, title, quality figures) of one recipe: its shown prompt ids and its generated ids; ``listed``:
    the ingredient lines of its prompt, for ``listed_used`` and ``extra_items`` (None: no prompt set)."""
    vocab, tokenizer, words, index = _DESCRIBE_CTX
    text = recipe_text(vocab, tokenizer, shown, toks)
    p = Q.parse_recipe(text)
    quality = Q.recipe_quality(text, toks, words, index)
    if listed is not None:
        quality.update(Q.listed_figures(listed, p.instructions, words))
    return text, p.title, quality


def real_prompted_quality(cv: CorpusView, qc: QualityContext, recipes: list[tuple[str, list[str]]]) -> list[dict]:
    """The figures of real recipes (text, the ingredient lines given) as of generated ones: the whole
    recipe's tokens count (tokenized like the corpus), and its own instructions use the lines given."""
    out = []
    for text, listed in recipes:
        ids = cv.ids(tokenize(text, cv.tokenizer))
        q = Q.recipe_quality(text, ids, qc.ingredient_words, qc.index)
        q.update(Q.listed_figures(listed, Q.parse_recipe(text).instructions, qc.ingredient_words))
        out.append(q)
    return out


def recipe_text(vocab: list[str], tokenizer: str, shown: list[int], toks: list[int]) -> str:
    """A recipe file's text: its shown prompt and generated ids, detokenized, ending with a newline."""
    text = detokenize([vocab[i] for i in shown + toks], tokenizer)
    return text if text.endswith("\n") else text + "\n"


def quality_workers(device: torch.device, cpus: int) -> int:
    """Worker processes for describing recipes (detokenizing, parsing, the novelty search), forked before
    the generation loop starts.

    In a thread of the generating process, describing holds the GIL against the loop (Python launching
    torch ops) and, on a CPU, steals a core from torch's threads, which then wait for each other in every
    parallel op. So on a GPU spare CPUs take it (up to 8); on a CPU a quarter of the CPUs do (at least
    one, given two CPUs), and torch gets the rest (see ``torch_threads``). One CPU: the writer thread.
    ``HPCRNN_QUALITY_WORKERS`` overrides (0: the writer thread)."""
    env = os.environ.get("HPCRNN_QUALITY_WORKERS", "")
    if env.strip().isdigit():
        return int(env)
    if device.type == "cuda":
        return max(0, min(8, cpus - 1))
    return 0 if cpus < 2 else max(1, min(8, cpus // 4))


def torch_threads(device: torch.device, cpus: int, workers: int, configured: int) -> int:
    """torch's threads: the CPUs the describing workers leave (``train.threads`` overrides)."""
    return configured or (max(1, cpus - workers) if device.type == "cpu" else cpus)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """A worker ends when its job does: the kernel sends it SIGKILL when the parent dies (a kill -9 of
    the job would otherwise leave it sleeping forever under init). Linux only; a no-op elsewhere."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class Describer:
    """Runs :func:`describe_recipe` in forked workers, or lazily in the caller (the writer thread)."""

    def __init__(self, cv: CorpusView, qc: QualityContext, workers: int):
        global _DESCRIBE_CTX
        _DESCRIBE_CTX = (cv.vocab, cv.tokenizer, qc.ingredient_words, qc.index)
        self.pool = None
        if workers > 0:
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=die_with_parent,
                initargs=(os.getpid(),),
            )
            self.pool.submit(int).result()  # fork the workers now, before this process initialises CUDA

    def submit(self, shown: list[int], toks: list[int], listed: list[str] | None = None) -> Callable[[], tuple]:
        """A thunk the writer thread calls for the result (computed there, or awaited from a worker)."""
        if self.pool is None:
            return lambda: describe_recipe(shown, toks, listed)
        return self.pool.submit(describe_recipe, shown, toks, listed).result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class RecipeWriter(threading.Thread):
    """Hands finished recipes to ``handle`` (describe, write the file and the index line) off the loop.
    The first failure stops the handling; put() and close() raise it in the calling thread."""

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
