"""What each recipe is primed with (``generate.prompt``), and recipe i's job: its prompt and random numbers.

* ``""``: the start of a recipe — the end-of-recipe token (what precedes every recipe in the training
  stream), followed by the tokens of ``Title:`` when most training documents begin with them (the
  MealMaster layout), so the model writes a title next;
* any text, tokenized like the corpus: a one-line prompt is a title (``Chocolate Cake`` is fed as
  ``Title: Chocolate Cake`` and a newline); a prompt with newlines is fed verbatim after the end-of-recipe
  token. A prompt whose words are all unknown to the vocabulary is refused;
* ``random``: a random window of ``data.window`` tokens from the test split (val, then train, when the
  test split is empty), drawn from the recipe's own stream and fed from a zero state — the seed of the
  lecture's Keras script (one-hot 50-word windows into an LSTM(256)), which this project reproduces.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from hpcrnn.config import Config
from hpcrnn.errors import InputError
from hpcrnn.generate.corpus_view import CorpusView
from hpcrnn.generate.decode import Job
from hpcrnn.generate.sampling import uniforms_per_token
from hpcrnn.text.tokenize import tokenize

TITLE_TEXT = "Title:"  # the opening of a recipe in the MealMaster layout


@dataclass
class PromptPlan:
    kind: str  # "start" | "text" | "random"
    fixed: list[int] = field(default_factory=list)  # fed for start/text
    shown_from: int = 0  # fixed[shown_from:] belongs to the recipe text (the leading EOR does not)
    region: tuple[int, int] | None = None  # random: where windows are drawn
    window: int = 0


def _warn(msg: str) -> None:
    print(f"hpcrnn.generate: warning: {msg}", file=sys.stderr, flush=True)


def recipe_rng(seed: int, i: int) -> np.random.Generator:
    """The random stream of recipe ``i``: independent of batch size, shards and order."""
    return np.random.default_rng([seed % 2**64, i])


def title_prefix(cv: CorpusView) -> list[int]:
    """The tokens of ``Title:`` when most training documents begin with them, else [] (a model file
    records the answer of its corpus)."""
    if cv.title_ids is not None:
        return list(cv.title_ids)
    ids = cv.ids(tokenize(TITLE_TEXT, cv.tokenizer))
    # whitespace tokenization closes the line with EOS; only the words open a document
    ids = [i for i in ids if cv.vocab[i] != "<eos>"]
    if not ids or cv.unk_id in ids:
        return []
    d = cv.docs(0)
    if len(d) == 0:
        return []
    s = cv.starts[d]
    s = s[s + len(ids) <= len(cv.tokens)]
    hits = np.ones(len(s), dtype=bool)
    for k, t in enumerate(ids):
        hits &= cv.tokens[s + k] == t
    return ids if len(s) and hits.mean() > 0.5 else []


def _random_plan(cv: CorpusView) -> PromptPlan:
    w = cv.window
    if not cv.has_text:
        raise InputError(
            f"{cv.path}: generate.prompt: random draws a window of corpus text, and a model file holds none: "
            f"give a prompt, or generate from the run that has the corpus"
        )
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


def _text_plan(p: str, cv: CorpusView, prefix: list[int]) -> PromptPlan:
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


def plan_prompt(cfg: Config, cv: CorpusView) -> PromptPlan:
    """The plan of ``generate.prompt`` against this corpus; a bad prompt raises InputError."""
    p = cfg.generate.prompt
    if p == "random":
        return _random_plan(cv)
    prefix = title_prefix(cv)
    if not p.strip():
        return PromptPlan("start", fixed=[cv.boundary_id] + prefix, shown_from=1)
    return _text_plan(p, cv, prefix)


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
