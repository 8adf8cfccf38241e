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

Many prompts (``generate.prompts: FILE``, or a list given to ``lm.generate``): each is a text prompt as
above. The file holds them in the corpus layout, split like the corpus (documents starting at a
``Title:`` line, :func:`hpcrnn.data.documents.prepared_documents`); ``generate.prompts_cut: ingredients``
takes each as a whole recipe and feeds it up to the end of its ingredient block. With ``P`` prompts and
``k`` = ``generate.num_recipes``, recipe ``i`` (1..P*k) is copy ``(i - 1) // P + 1`` of prompt
``(i - 1) % P + 1``: copy-major, so more recipes per prompt only add recipes, and recipe ``i``'s random
numbers (``recipe_rng(seed, i)``) never depend on the batch size or the shards.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcrnn.config import Config
from hpcrnn.data.documents import prepared_documents
from hpcrnn.data.sources import ReadStats
from hpcrnn.errors import InputError
from hpcrnn.generate.corpus_view import CorpusView
from hpcrnn.generate.decode import Job
from hpcrnn.generate.quality import parse_recipe
from hpcrnn.generate.sampling import uniforms_per_token
from hpcrnn.text.formats import ingredient_block
from hpcrnn.text.tokenize import tokenize

TITLE_TEXT = "Title:"  # the opening of a recipe in the MealMaster layout
PROMPT_START = "^Title:"  # where a prompt starts in a prompts file (data.document_start's syntax)


@dataclass
class PromptPlan:
    kind: str  # "start" | "text" | "random"
    fixed: list[int] = field(default_factory=list)  # fed for start/text
    shown_from: int = 0  # fixed[shown_from:] belongs to the recipe text (the leading EOR does not)
    region: tuple[int, int] | None = None  # random: where windows are drawn
    window: int = 0


@dataclass
class PromptEntry:
    """One prompt of many: what is fed, and what its figures compare against."""

    number: int  # 1-based, in file order
    title: str | None
    text: str  # the prompt as fed (after the cut)
    listed: list[str]  # its ingredient lines (listed_used / extra_items)
    real: str | None = None  # the whole recipe it was cut from (generate.prompts_cut: ingredients)


@dataclass
class PromptSet:
    """Many prompts (``generate.prompts``): recipe ``i`` is primed by prompt ``(i - 1) % P + 1``."""

    source: str  # the file, or "lm.generate"
    entries: list[PromptEntry]
    plans: list[PromptPlan]
    digest: str  # of the prompts as fed: a folder never mixes recipes of two prompt sets

    def index(self, i: int) -> int:
        return (i - 1) % len(self.entries)

    def entry(self, i: int) -> PromptEntry:
        return self.entries[self.index(i)]

    def record(self) -> dict:
        """What plan.json and summary.json say of the prompts."""
        return {"source": self.source, "prompts": len(self.entries), "sha256": self.digest}


def recipe_prompt(title: str, ingredients=(), *, categories=(), servings: int | None = None) -> str:
    """A prompt in the corpus' own layout: ``Title:``, optional ``Categories:`` and ``Yield:`` lines, then
    one ingredient line each (``"2 c  Flour"``), as ``lm.generate(prompt=...)`` and prompts files take it."""
    if not isinstance(title, str) or not title.strip() or "\n" in title:
        raise InputError(f"recipe_prompt: title: {title!r} must be one non-empty line")
    if isinstance(ingredients, str):
        ingredients = [ingredients]
    lines = [f"{TITLE_TEXT} {title.strip()}"]
    if categories:
        lines.append("Categories: " + (categories if isinstance(categories, str) else ", ".join(categories)))
    if servings is not None:
        lines.append(f"Yield: {int(servings)} Servings")
    for k, line in enumerate(ingredients):
        if not isinstance(line, str) or not line.strip() or "\n" in line:
            raise InputError(f"recipe_prompt: ingredients[{k}]: {line!r} must be one non-empty line")
        lines.append(line.strip())
    return "\n".join(lines) + "\n"


def cut_after_ingredients(text: str, where: str) -> str:
    """A whole recipe up to the end of its ingredient block (the instructions are left out)."""
    lines = text.split("\n")
    start, end = ingredient_block(lines)
    if end <= start:
        raise InputError(f"{where}: generate.prompts_cut: ingredients: no ingredient block to cut after")
    return "\n".join(lines[:end]) + "\n"


def read_prompts_file(path: str | Path, cut: str = "none") -> list[PromptEntry]:
    """The prompts of a file, split like the corpus (a document starts at each ``Title:`` line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: generate.prompts: no such file")
    try:
        docs = [t for t, _ in prepared_documents(path, PROMPT_START, "plain", True, ReadStats())]
    except OSError as e:
        raise InputError(f"{path}: generate.prompts: cannot read: {e.strerror or e}") from None
    if not docs:
        raise InputError(f"{path}: generate.prompts: no prompt (each starts with a {TITLE_TEXT} line)")
    entries = []
    for k, text in enumerate(docs, 1):
        fed = cut_after_ingredients(text, f"{path}: prompt {k}") if cut == "ingredients" else text
        entries.append(_entry(k, fed, text if cut == "ingredients" else None))
    return entries


def _entry(k: int, fed: str, real: str | None) -> PromptEntry:
    p = parse_recipe(fed)
    return PromptEntry(k, p.title, fed, p.ingredient_lines, real)


def plan_prompts(cfg: Config, cv: CorpusView, texts: list[str] | None = None) -> PromptSet:
    """The plans of many prompts: ``texts`` (``lm.generate``'s list), else ``generate.prompts``' file."""
    g = cfg.generate
    if texts is None:
        source, entries = g.prompts, read_prompts_file(g.prompts, g.prompts_cut)
    else:
        source, entries = "lm.generate", [_entry(k, t, None) for k, t in enumerate(texts, 1)]
    prefix = title_prefix(cv)
    unknown: dict[int, list[str]] = {}  # one warning for the set, not a line per prompt
    plans = [
        _text_plan(e.text, cv, prefix, f"{source}: prompt {e.number}", unknown.setdefault(e.number, []))
        for e in entries
    ]
    unknown = {k: v for k, v in unknown.items() if v}
    if unknown:
        k, words = next(iter(unknown.items()))
        _warn(
            f"{source}: {len(unknown)} of {len(entries)} prompts have words unknown to the vocabulary, fed as <unk> "
            f"(prompt {k}: {', '.join(words[:10])})"
        )
    digest = hashlib.sha256(repr([e.text for e in entries]).encode("utf-8")).hexdigest()
    return PromptSet(str(source), entries, plans, digest)


def recipe_count(cfg: Config, pp) -> int:
    """Recipes of the job: ``generate.num_recipes``, for each prompt of a prompt set."""
    return cfg.generate.num_recipes * (len(pp.entries) if isinstance(pp, PromptSet) else 1)


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


def _text_plan(
    p: str, cv: CorpusView, prefix: list[int], what: str = "generate.prompt", unknown: list[str] | None = None
) -> PromptPlan:
    """``unknown``: collects the words unknown to the vocabulary (the caller warns), else warned here."""
    one_line = "\n" not in p.strip("\n")
    text = p.strip("\n") + "\n" if one_line else p
    toks = tokenize(text, cv.tokenizer)
    own = cv.ids(toks)
    # words: what is neither white space nor a special token (the char tokenizer knows the space)
    words = [i for t, i in zip(toks, own) if t.strip() and t not in ("<eos>", "<eor>")]
    if not words or all(i == cv.unk_id for i in words):
        raise InputError(f"{what}: {p[:60]!r}: every word is unknown to the vocabulary of {cv.path}")
    missing = [t for t, i in zip(toks, own) if i == cv.unk_id]
    if unknown is not None:
        unknown.extend(missing)
    elif missing:
        _warn(f"{what}: unknown to the vocabulary, fed as <unk>: {', '.join(missing[:10])}")
    if one_line and prefix and own[: len(prefix)] != prefix:
        own = cv.ids(tokenize(f"{TITLE_TEXT} {text}", cv.tokenizer))  # a one-line prompt is a title
    return PromptPlan("text", fixed=[cv.boundary_id] + own, shown_from=1)


def plan_prompt(cfg: Config, cv: CorpusView) -> PromptPlan | PromptSet:
    """The plan of ``generate.prompt`` (or of ``generate.prompts``' file) against this corpus; a bad prompt
    raises InputError."""
    if cfg.generate.prompts:
        return plan_prompts(cfg, cv)
    p = cfg.generate.prompt
    if p == "random":
        return _random_plan(cv)
    prefix = title_prefix(cv)
    if not p.strip():
        return PromptPlan("start", fixed=[cv.boundary_id] + prefix, shown_from=1)
    return _text_plan(p, cv, prefix)


def make_job(i: int, cfg: Config, cv: CorpusView, pp: PromptPlan | PromptSet) -> tuple[Job, int]:
    """Recipe i's job and how many leading prompt tokens are hidden from its text."""
    g = cfg.generate
    if isinstance(pp, PromptSet):
        pp = pp.plans[pp.index(i)]
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
    return Job(i, prompt, u, close=pp.kind == "text" and g.prompt_ingredients == "all"), hidden
