"""Quality figures of a recipe, generated or real, so the two can be read side by side.

Every figure is computed the same way for a generated recipe and for a held-out (test-split) recipe:

``structure``
    ``has_title`` (a ``Title:`` line with a word in it, or, for a headerless layout, a short first line),
    ``has_ingredients`` (at least one ingredient line: the block that
    :func:`hpcrnn.text.formats.ingredient_block` finds after the header) and ``has_instructions`` (at least
    :data:`MIN_INSTRUCTION_WORDS` words after the ingredient block); ``structure`` is all three.

``coherence`` (ingredient coherence)
    The lecture's model (the course's Keras script: an LSTM(256) on one-hot 50-word windows) writes
    instructions that use ingredients its list never named. The *ingredient words* are derived from the
    training corpus (:func:`build_ingredient_words`): words of the ingredient *names* in training recipes'
    ingredient lines (the part after amount and unit and before the first ``,`` ``;`` ``--`` ``(``;
    ``1/2 c  Chopped parsley, fresh`` names ``chopped parsley``), normalised (lower case, a plural
    ``s``/``es``/``ies`` folded to the singular), at least three letters long, not a unit
    (:data:`hpcrnn.text.formats.UNITS`), size or preparation word (:data:`NOT_INGREDIENTS`), named in at
    least ``min_recipes`` training recipes, and *mostly used as an ingredient*: in at least half the recipes
    whose instructions mention the word, it is also in the ingredient names (this drops ``heat``, ``bowl``,
    ``minute`` without a hand list). A recipe's coherence is the share of the distinct ingredient words its
    instructions mention that appear anywhere in its own ingredient lines; ``None`` when its instructions
    mention none.

``repeated_4grams``
    The share of the token 4-grams that repeat an earlier 4-gram of the same token sequence:
    ``1 - distinct / total`` (0 for fewer than four tokens). Greedy decoding, which loops, scores high.

``longest_copy``
    Novelty: the longest run of tokens copied verbatim from the training split's token stream, exact
    (:class:`CopyIndex`). For a generated recipe it is measured on the generated tokens (not the prompt).

``listed_used`` and ``extra_items`` (a prompted recipe: the ingredients it was given)
    Kiddon et al. (2016)'s two measures of writing a recipe from a given ingredient list, with the same
    simple matcher as ``coherence`` (normalised words, no synonyms). The *listed* lines are the ingredient
    lines of the prompt (for a real recipe: its own ingredient lines). A listed line's *head noun* is the
    last of its name words (:func:`name_words`, in order): ``olive oil`` -> ``oil``, ``Lemons, juiced``
    -> ``lemon``, ``1 lg Garlic clove`` -> ``garlic`` (``clove`` is a unit); a line without one is not
    counted. ``listed_used`` is the share of the listed lines whose head noun the instructions name;
    ``extra_items`` the number of distinct ingredient words (the corpus' vocabulary above) that the
    instructions name and that appear in no listed line (any word of it). Both are ``None`` for a prompt
    that lists no ingredient line, and ``extra_items`` is ``None`` without ingredient words (a model file
    without its corpus).

Aggregates over many recipes come from :func:`summarize`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from hpcrnn.text.formats import HEADER_START_RE, TITLE_RE, UNITS, ingredient_block

MIN_INSTRUCTION_WORDS = 5

_WORD = re.compile(r"[^\W\d_]+")
_AMOUNT = re.compile(r"^[\s\d/.,½¼¾⅓⅔⅛-]*")
_NAME_END = re.compile(r"\s--|--|[,;(]")

# Words of ingredient names that describe the ingredient rather than name it, and function words.
NOT_INGREDIENTS = frozenset(
    """and or of the for to with without in on into at from about plus more less
taste optional divided note see below above recipe recipes if as needed desired some any other extra
fresh freshly frozen dried dry canned cooked uncooked raw ripe hot cold warm lukewarm room temperature
chopped minced diced sliced grated shredded crushed ground peeled seeded cored halved quartered cubed
trimmed rinsed drained softened melted beaten mashed pitted packed sifted toasted roasted cut finely
coarsely thinly thickly roughly lightly well very firmly fine coarse thin thick lean boneless skinless
skinned split whole large medium small big little jumbo extra mini baby young new old sweet unsweetened
sweetened salted unsalted low fat free nonfat lowfat reduced light heavy regular plain quick instant
prepared homemade bought style type brand good best inch inches piece pieces part parts cup cups can cans
package pkg size sized total approx approximately each per few several such use used using made make
into strips cubes chunks rings wedges halves pint quart pound ounce tablespoon teaspoon container jar
mixed assorted favorite favourite fully partially room-temperature then cool cooled chilled hard soft
tender""".split()
)


def normalize_word(w: str) -> str:
    """Lower case; fold an English plural to the singular (``tomatoes`` and ``tomato`` meet)."""
    w = w.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("oes", "ches", "shes", "sses", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def words(text: str) -> list[str]:
    """Normalised words of at least three letters."""
    return [normalize_word(w) for w in _WORD.findall(text) if len(w) >= 3]


# ---------------------------------------------------------------- parsing


@dataclass
class ParsedRecipe:
    title: str | None
    ingredient_lines: list[str]
    instructions: str

    @property
    def has_title(self) -> bool:
        return bool(self.title and _WORD.search(self.title))

    @property
    def has_ingredients(self) -> bool:
        return any(_WORD.search(line) for line in self.ingredient_lines)

    @property
    def has_instructions(self) -> bool:
        return len(_WORD.findall(self.instructions)) >= MIN_INSTRUCTION_WORDS


def parse_recipe(text: str) -> ParsedRecipe:
    """Split recipe text into title, ingredient lines and instructions.

    The corpus' layout (``Title:``/``Categories:``/``Yield:`` header, ingredient lines, instructions) is
    found with :func:`hpcrnn.text.formats.ingredient_block`, the same rule the detokenizer uses to capitalise
    ingredient names. Text without that header (e.g. a generated fragment that starts mid-recipe) has no
    ingredient block; its first line counts as a title when it is short and not a sentence.
    """
    lines = text.split("\n")
    title = None
    for line in lines:
        m = TITLE_RE.match(line)
        if m:
            title = m.group(1).strip()
            break
    start, end = ingredient_block(lines)
    if end > start:
        ingredients = [ln.strip() for ln in lines[start:end] if ln.strip()]
        instructions = "\n".join(lines[end:])
    elif start > 0:  # a header and nothing that looks like ingredients
        ingredients, instructions = [], "\n".join(lines[start:])
    else:
        ingredients = []
        body = lines
        k = next((i for i, ln in enumerate(lines) if ln.strip()), None)  # the first non-blank line
        if title is None and k is not None:
            first = lines[k].strip()
            if len(first) <= 80 and not first.endswith((".", "!", "?")) and not HEADER_START_RE.match(first):
                title, body = first, lines[k + 1 :]
        instructions = "\n".join(ln for ln in body if not HEADER_START_RE.match(ln))
    return ParsedRecipe(title, ingredients, instructions)


def ingredient_name(line: str) -> str:
    """The name part of an ingredient line: after amount and unit, before the first , ; -- ( ."""
    s = _AMOUNT.sub("", line.strip())
    parts = s.split(None, 1)
    if parts and parts[0].lower().rstrip(".") in UNITS and len(parts) > 1:
        s = parts[1]
    s = s.lstrip("- ")  # a MealMaster continuation line: "-Beaten"
    m = _NAME_END.search(s)
    return s[: m.start()] if m else s


def _name_word_list(line: str) -> list[str]:
    return [w for w in words(ingredient_name(line)) if w not in NOT_INGREDIENTS and w not in UNITS]


def name_words(line: str) -> set[str]:
    """Candidate ingredient words of one ingredient line."""
    return set(_name_word_list(line))


def build_ingredient_words(
    parsed: Iterable[ParsedRecipe], min_recipes: int = 3, min_ingredient_share: float = 0.5
) -> frozenset[str]:
    """The ingredient vocabulary of a corpus (see the module docstring for the definition)."""
    in_names: dict[str, int] = {}
    in_instr: dict[str, int] = {}
    both: dict[str, int] = {}
    for p in parsed:
        names = set()
        for line in p.ingredient_lines:
            names |= name_words(line)
        instr = set(words(p.instructions))
        for w in names:
            in_names[w] = in_names.get(w, 0) + 1
        for w in instr:
            in_instr[w] = in_instr.get(w, 0) + 1
            if w in names:
                both[w] = both.get(w, 0) + 1
    out = set()
    for w, n in in_names.items():
        if n < min_recipes:
            continue
        mentioned = in_instr.get(w, 0)
        # "mostly used as an ingredient": where instructions say it, the ingredient list usually has it
        if mentioned and both.get(w, 0) < min_ingredient_share * mentioned:
            continue
        out.add(w)
    return frozenset(out)


def coherence(p: ParsedRecipe, ingredient_words: frozenset[str]) -> tuple[float | None, int]:
    """(share of the ingredient words named in the instructions that the ingredient lines hold, how many
    distinct ingredient words the instructions name)."""
    mentioned = {w for w in words(p.instructions) if w in ingredient_words}
    if not mentioned:
        return None, 0
    own = set()
    for line in p.ingredient_lines:
        own.update(words(line))
    return len(mentioned & own) / len(mentioned), len(mentioned)


def head_noun(line: str) -> str | None:
    """The head noun of an ingredient line: the last of its name words (English names end with their head)."""
    ws = _name_word_list(line)
    return ws[-1] if ws else None


def listed_figures(listed: Sequence[str], instructions: str, ingredient_words: frozenset[str]) -> dict:
    """``listed_used``, ``extra_items`` (see the module docstring) and ``listed`` (lines with a head noun)
    of instructions written for the ingredient lines ``listed``."""
    heads = [h for h in map(head_noun, listed) if h]
    if not heads:
        return {"listed": 0, "listed_used": None, "extra_items": None}
    said = set(words(instructions))
    own = set().union(*(words(line) for line in listed))
    extra = len({w for w in said if w in ingredient_words and w not in own}) if ingredient_words else None
    used = sum(h in said for h in heads) / len(heads)
    return {"listed": len(heads), "listed_used": round(used, 4), "extra_items": extra}


# ---------------------------------------------------------------- repetition


def repeated_ngram_share(tokens: Sequence[int], n: int = 4) -> float:
    """1 - distinct n-grams / n-grams (0.0 below n tokens)."""
    t = len(tokens)
    if t < n:
        return 0.0
    grams = [tuple(tokens[i : i + n]) for i in range(t - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


# ---------------------------------------------------------------- novelty


class CopyIndex:
    """Exact longest verbatim copy of a token sequence from one (large) token stream.

    Built once in O(T log T) with numpy: every position of the stream gets a key made of the next ``K``
    tokens packed into two 64-bit integers (``K`` = 8 for vocabularies up to 65,535 tokens), and the
    positions are sorted by that key — a suffix array truncated at depth ``K``. A query asks
    "does this n-gram occur?": for n <= K it is a range search on the sorted keys; for longer n the
    candidates of the rarer of the first and last K-gram are checked against the stream directly. The
    longest copy of a recipe then takes O(len(recipe)) such questions (the classic two-pointer scan: the
    best length only grows). Memory: about 20 bytes per stream token.
    """

    def __init__(self, stream: np.ndarray, vocab_size: int):
        stream = np.asarray(stream, dtype=np.int64)
        self.sentinel = int(vocab_size)  # never a real token: pads the end and separates segments
        self.bits = max(1, self.sentinel.bit_length())
        if self.bits > 32:
            raise ValueError(f"vocabulary of {vocab_size} tokens is too large for CopyIndex")
        self.per = 64 // self.bits
        self.K = 2 * self.per
        n = len(stream)
        self.n = n
        self.pad = np.concatenate([stream, np.full(self.K, self.sentinel, dtype=np.int64)])
        self.k1 = self._keys(0)
        self.k2 = self._keys(self.per)
        order = np.lexsort((self.k2, self.k1))
        self.sa = order.astype(np.int32 if n < 2**31 else np.int64)
        self.k1 = self.k1[order]
        self.k2 = self.k2[order]
        self.pad = self.pad.astype(np.int32 if self.bits < 32 else np.int64)

    def _keys(self, offset: int) -> np.ndarray:
        n = self.n
        key = np.zeros(n, dtype=np.uint64)
        for i in range(self.per):
            key <<= np.uint64(self.bits)
            key |= self.pad[offset + i : offset + i + n].astype(np.uint64)
        return key

    def _pack(self, seq: np.ndarray) -> tuple[int, int]:
        """Inclusive key range of every key whose first len(seq) tokens are seq (len(seq) <= per)."""
        v = 0
        for t in seq:
            v = (v << self.bits) | int(t)
        rest = self.bits * (self.per - len(seq))
        lo = v << rest
        return lo, lo | ((1 << rest) - 1)

    def _range(self, seq: np.ndarray) -> tuple[int, int]:
        """Half-open range of self.sa whose positions start with seq (1 <= len(seq) <= K)."""
        a = seq[: self.per]
        lo1, hi1 = self._pack(a)
        lo = int(np.searchsorted(self.k1, np.uint64(lo1), "left"))
        hi = int(np.searchsorted(self.k1, np.uint64(hi1), "right"))
        if len(seq) <= self.per or lo == hi:
            return lo, hi
        lo2, hi2 = self._pack(seq[self.per :])
        sub = self.k2[lo:hi]
        return lo + int(np.searchsorted(sub, np.uint64(lo2), "left")), lo + int(
            np.searchsorted(sub, np.uint64(hi2), "right")
        )

    def occurs(self, seq: np.ndarray) -> bool:
        """Whether seq (a non-empty int array) occurs in the stream."""
        m = len(seq)
        if m <= self.K:
            lo, hi = self._range(seq)
            return hi > lo
        lo_a, hi_a = self._range(seq[: self.K])
        if hi_a == lo_a:
            return False
        lo_b, hi_b = self._range(seq[m - self.K :])
        if hi_b == lo_b:
            return False
        if hi_a - lo_a <= hi_b - lo_b:
            cand = self.sa[lo_a:hi_a].astype(np.int64)
            known = (0, self.K)
        else:
            cand = self.sa[lo_b:hi_b].astype(np.int64) - (m - self.K)
            known = (m - self.K, m)
        cand = cand[(cand >= 0) & (cand + m <= self.n)]
        # narrow a large candidate set one token at a time, then compare what is left in one go
        d = 0
        while len(cand) > 64 and d < m:
            if not known[0] <= d < known[1]:
                cand = cand[self.pad[cand + d] == seq[d]]
            d += 1
        if len(cand) == 0:
            return False
        block = self.pad[cand[:, None] + np.arange(m)]
        return bool((block == seq[None, :]).all(axis=1).any())

    def longest_copy(self, seq: Sequence[int]) -> int:
        """The length of the longest contiguous run of seq that occurs verbatim in the stream."""
        s = np.asarray(seq, dtype=np.int64)
        n = len(s)
        best = 0
        for j in range(n):
            if j + best >= n:
                break
            while j + best < n and self.occurs(s[j : j + best + 1]):
                best += 1
        return best


# ---------------------------------------------------------------- one recipe, many recipes


def recipe_quality(text: str, tokens: Sequence[int], ingredient_words: frozenset[str], index: CopyIndex | None) -> dict:
    """The figures of one recipe: ``text`` as written, ``tokens`` the ids the figures count on."""
    p = parse_recipe(text)
    coh, n_mentioned = coherence(p, ingredient_words)
    return {
        "has_title": p.has_title,
        "has_ingredients": p.has_ingredients,
        "has_instructions": p.has_instructions,
        "structure": p.has_title and p.has_ingredients and p.has_instructions,
        "ingredient_lines": len(p.ingredient_lines),
        "instruction_ingredient_words": n_mentioned,
        "coherence": None if coh is None else round(coh, 4),
        "repeated_4grams": round(repeated_ngram_share(list(tokens), 4), 4),
        "longest_copy": index.longest_copy(tokens) if index is not None else None,
    }


def _mean(xs: list) -> float | None:
    return round(float(np.mean(xs)), 4) if xs else None


def summarize(qualities: list[dict], lengths: list[int] | None = None) -> dict:
    """Aggregate figures over recipes (shares, means, the distribution of the longest copy)."""
    n = len(qualities)
    out: dict = {"recipes": n}
    if not n:
        return out
    for k in ("has_title", "has_ingredients", "has_instructions", "structure"):
        out[k] = round(sum(bool(q[k]) for q in qualities) / n, 4)
    coh = [q["coherence"] for q in qualities if q.get("coherence") is not None]
    out["coherence_mean"] = _mean(coh)
    out["coherence_recipes"] = len(coh)
    out["ingredient_lines_mean"] = _mean([q["ingredient_lines"] for q in qualities])
    out["repeated_4grams_mean"] = _mean([q["repeated_4grams"] for q in qualities])
    cp = [q["longest_copy"] for q in qualities if q.get("longest_copy") is not None]
    if cp:
        out["longest_copy_mean"] = _mean(cp)
        out["longest_copy_median"] = float(np.median(cp))
        out["longest_copy_max"] = int(max(cp))
    if lengths is not None and lengths:
        out["tokens_mean"] = _mean(lengths)
    if any("listed_used" in q for q in qualities):  # prompted recipes only: unprompted summaries unchanged
        used = [q["listed_used"] for q in qualities if q.get("listed_used") is not None]
        out["listed_used_mean"] = _mean(used)
        out["extra_items_mean"] = _mean([q["extra_items"] for q in qualities if q.get("extra_items") is not None])
        out["listed_recipes"] = len(used)
    return out
