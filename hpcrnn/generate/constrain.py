"""Lexically constrained decoding: instructions that use the recipe's own listed ingredients (issue 28).

Two settings, both 0 (off) by default; with both 0, and no prompt whose ingredient list is closed (below),
the decoder builds none of this (its recipes are bitwise those without the settings):

* ``generate.listed_bias`` (L): in the instructions of a recipe, added to the log-probability of the tokens
  that name a *listed* ingredient not yet named in the instructions: the head noun
  (:func:`hpcrnn.generate.quality.head_noun`) of each ingredient line of this recipe — the prompt's or the
  ones the model wrote itself. Once the instructions name it, its bonus ends.
* ``generate.unlisted_bias`` (U): in the instructions, subtracted from the log-probability of the corpus'
  ingredient words (:func:`hpcrnn.generate.quality.build_ingredient_words`) that no listed line names
  (any of its words): the *extra items* of ``listed_figures``.

The bias goes on the log-probabilities before the temperature divides them (the usual order: a logit
processor, then the temperature and top_k/top_p on the result); the decoder adds ``bias / temperature`` to
the stepper's already divided logits (greedy: ``bias``), a constant per row that softmax does not mind.
A token names a word when it is one normalised word (:func:`hpcrnn.generate.quality.words`), so
``tomatoes`` names ``tomato``, as the figures count it.

**Where a recipe is**, per slot, on the host, only when a line ends: the lines so far (each detokenized
alone, as the recipe's text will have it) go through :func:`hpcrnn.text.formats.ingredient_block`, the rule
:func:`hpcrnn.generate.quality.parse_recipe` uses, so the tracker's ingredient lines are the figures'. A
document opens with its header lines (``Title:`` …); the ingredient block follows; the first line that
ends it (a blank line, a line over 40 characters, a short sentence) is the first of the instructions.
The instructions are known to have begun at the end of that line, or earlier, in the middle of it, as soon
as it is longer than 41 characters (a rough character count on the device asks the host to look). A
document without a header line first, or whose block lists no ingredient line, gets no bias (no list to
follow). The end-of-recipe token starts a new document (a ``random`` window's).

**On the device**, per slot: the ``[B, V]`` bias (zero until the instructions begin), the mode, and the
rough length of the line being written. At every step the bias is added (one pass over ``[B, V]``) and a
sampled token that names a listed ingredient ends that word's bonus (a scatter over its few tokens). The
host looks only at slots still before their instructions that just ended a line (or grew long), so on a
GPU, while some slot is there, each step waits for its tokens (a synchronisation per step).

**A prompt's ingredient list is the whole list** (``generate.prompt_ingredients: all``, the default): a
text prompt that ends at the end of an ingredient line of its block (a ``prompts_cut: ingredients`` cut,
``hpcrnn.recipe_prompt``) gives the recipe its ingredients, as the recipe-generation task does (Kiddon et
al. 2016: the instructions from a title and an ingredient list). Left alone, the model often lists more
ingredients first, and the instructions then use what it added (the extra items of ``listed_figures``).
So such a slot is in its instructions from its first generated token (the bias too): its first token
may not be one that starts ingredient lines more often than it starts the instructions of training
recipes (:func:`line_starts`; without the corpus text, a token with a digit or a section heading's), and
its first line may not end (nor the recipe) before it is longer than an ingredient line can be (the
block rule's end; :data:`FIRST_LONG`). Then decoding is free. ``more``: the model may list more
ingredients, and the tracker waits for the block to end as for any recipe.

A slot's bias depends on its own tokens only, so recipe ``i`` stays a function of ``(seed, i)`` whatever
the batch size or shards. Recipe tokenizer only (the ingredient rule reads words and lines).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hpcrnn.errors import ConfigError
from hpcrnn.generate.quality import head_noun, words
from hpcrnn.text.detokenize import detokenize
from hpcrnn.text.formats import HEADER_START_RE, ingredient_block
from hpcrnn.text.tokenize import EOR, NL

OFF, HEADER, BLOCK, INSTR = 0, 1, 2, 3  # a slot's mode: no bias / header lines / ingredient block / instructions
# a line still being written whose text (stripped) is longer than this is longer than 40 characters (an
# ingredient line's most) whatever follows: appending tokens shortens what is written by one space at most
LONG = 41
# a closed prompt's first line may end once its rough length passes this: the rough count (``_chars``) can
# exceed the text's length (a word after "(" is written without its space), and the device alone decides
# here, so it keeps a margin over LONG that such joins do not use up in one line
FIRST_LONG = 48
_NONE = np.zeros(0, dtype=np.int64)
MASKED = -1.0e4  # added to a logit: its token is never drawn (exp underflows to 0 in float32), and no inf


def _chars(tok: str) -> int:
    """A token's share of the rough line length: its characters, and a space before a word."""
    return 0 if tok == NL else len(tok) + int(tok[:1].isalnum())


def _token_word(tok: str) -> str | None:
    ws = words(tok)
    return ws[0] if len(ws) == 1 else None


@dataclass
class Lexicon:
    """What every slot shares: the token ids of each word, the bias values, and their device tables."""

    vocab: list[str]
    nl_id: int
    eor_id: int | None
    listed: float  # the bonus, already divided by the temperature
    penalty: np.ndarray | None  # [V] float32: minus the penalty at the unlisted candidates' tokens, else 0
    word_of: list[str | None]  # each token's normalised word
    tokens_of: dict[str, np.ndarray]  # a normalised word's token ids
    word_id: torch.Tensor  # [V] long: the row of members holding the token's word (-1: no word)
    members: torch.Tensor  # [words, K] long: each word's token ids, padded with its first
    chars: torch.Tensor  # [V] long: a token's characters and the space before a word (the rough line length)
    # a closed prompt's first line (the module doc), by stage: [0] free, [1] may not end yet, [2] its first
    # token (nor one that starts ingredient lines); None: prompts' blocks stay open
    stages: torch.Tensor | None = None


def line_starts(vocab: list[str], docs) -> np.ndarray:
    """``[2, V]`` counts over documents (token id lists, in the corpus layout): how often each token starts
    a line of the ingredient block ([0]) and the first line of the instructions ([1]), by the block rule
    (:func:`hpcrnn.text.formats.ingredient_block`) over each line detokenized alone, as the tracker reads."""
    nl = vocab.index(NL)
    counts = np.zeros((2, len(vocab)), dtype=np.int64)
    for ids in docs:
        lines: list[list[int]] = [[]]
        for t in ids:
            if t == nl:
                lines.append([])
            elif vocab[t] != EOR:
                lines[-1].append(int(t))
        texts = [detokenize([vocab[i] for i in ln], "recipe", capitalize=False, layout=False) for ln in lines]
        if not texts or not HEADER_START_RE.match(texts[0]):
            continue
        start, end = ingredient_block(texts)
        if end <= start:
            continue
        for ln, tx in zip(lines[start:end], texts[start:end]):
            if ln and tx.strip():
                counts[0, ln[0]] += 1
        first = next((ln for ln, tx in zip(lines[end:], texts[end:]) if ln and tx.strip()), None)
        if first:
            counts[1, first[0]] += 1
    return counts


def ingredient_openers(vocab: list[str], counts: np.ndarray | None) -> np.ndarray:
    """``[V]`` bool: the tokens that start ingredient lines more often than instructions (``counts`` from
    :func:`line_starts`); without counts (a model file holds no corpus text), those with a digit (the
    quantities) and section headings' (``MMMMM``, dashes)."""
    if counts is not None and counts.sum():
        return counts[0] > counts[1]
    return np.array([any(c.isdigit() for c in t) or t == "mmmmm" or (len(t) >= 3 and set(t) == {"-"}) for t in vocab])


def lexicon(
    g, vocab: list[str], tokenizer: str, ingredient_words: frozenset, device, *, close: bool = False, openers=None
) -> Lexicon | None:
    """The shared tables for ``g`` (a GenerateConfig) over this vocabulary, or None when both biases are 0
    and prompts' blocks are not closed (``close``; ``openers``: :func:`ingredient_openers`, with it)."""
    if tokenizer != "recipe":
        if g.listed_bias or g.unlisted_bias:
            which = "generate.listed_bias" if g.listed_bias else "generate.unlisted_bias"
            raise ConfigError(f"{which}: needs the recipe tokenizer (data.tokenizer is {tokenizer})")
        return None  # the block rule reads the recipe layout: other tokenizers' prompts stay open
    if not g.listed_bias and not g.unlisted_bias and not close:
        return None
    scale = 1.0 / g.temperature if g.temperature > 0 else 1.0
    word_of = [_token_word(t) for t in vocab]
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(word_of):
        if w is not None:
            groups.setdefault(w, []).append(i)
    tokens_of = {w: np.asarray(ids, dtype=np.int64) for w, ids in groups.items()}
    penalty = None
    if g.unlisted_bias and ingredient_words:
        penalty = np.zeros(len(vocab), dtype=np.float32)
        for w in ingredient_words:
            penalty[tokens_of.get(w, _NONE)] = -g.unlisted_bias * scale
    names = list(groups)
    k = max((len(v) for v in groups.values()), default=1)
    members = np.zeros((max(1, len(names)), k), dtype=np.int64)
    word_id = np.full(len(vocab), -1, dtype=np.int64)
    for row, w in enumerate(names):
        ids = groups[w]
        members[row] = ids + [ids[0]] * (k - len(ids))
        word_id[ids] = row
    dev = torch.device(device)
    stages = None
    if close:
        table = np.zeros((3, len(vocab)), dtype=np.float32)
        ends = [vocab.index(NL)] + ([vocab.index(EOR)] if EOR in vocab else [])
        table[1:, ends] = MASKED
        table[2, np.asarray(openers if openers is not None else ingredient_openers(vocab, None), bool)] = MASKED
        stages = torch.from_numpy(table).to(dev)
    return Lexicon(
        vocab=list(vocab),
        nl_id=vocab.index(NL),
        eor_id=vocab.index(EOR) if EOR in vocab else None,
        listed=float(g.listed_bias) * scale,
        penalty=penalty,
        word_of=word_of,
        tokens_of=tokens_of,
        word_id=torch.from_numpy(word_id).to(dev),
        members=torch.from_numpy(members).to(dev),
        chars=torch.tensor([_chars(t) for t in vocab], dtype=torch.long, device=dev),
        stages=stages,
    )


@dataclass
class Document:
    """The host's view of one slot's document: its lines so far and where it is (the module doc)."""

    lex: Lexicon
    mode: int = HEADER
    lines: list[str] = field(default_factory=list)  # complete lines, detokenized (header and block)
    toks: list[list[int]] = field(default_factory=list)  # their tokens
    partial: list[int] = field(default_factory=list)  # the line being written
    start: int = 0  # the ingredient block's first line
    listed: list[str] = field(default_factory=list)  # the ingredient lines, once the instructions begin
    said: set[str] = field(default_factory=set)  # words the instructions named (while the host reads them)

    def feed(self, ids) -> None:
        """Read tokens of the document (a prompt's, or generated ones the host was shown)."""
        lex = self.lex
        for t in ids:
            if t == lex.eor_id:
                self.__init__(lex)  # a new document
            elif t == lex.nl_id:
                self._line_end()
            else:
                self.partial.append(t)
                if self.mode == INSTR and lex.word_of[t] is not None:
                    self.said.add(lex.word_of[t])
        if self.mode == BLOCK and self.partial:
            self._check_long()

    def close(self) -> bool:
        """A prompt read so far ends at the end of an ingredient line: its block is the whole list, and the
        instructions begin now (the module doc). False (and nothing changes) otherwise."""
        if self.mode != BLOCK or self.partial:
            return False
        self._instructions(len(self.lines), [])
        return self.mode == INSTR

    def text(self, toks: list[int]) -> str:
        """One line as the recipe's text writes it (capitals aside)."""
        return detokenize([self.lex.vocab[i] for i in toks], "recipe", capitalize=False, layout=False)

    def _line_end(self) -> None:
        line, self.partial = self.partial, []
        if self.mode not in (HEADER, BLOCK):
            return
        self.lines.append(self.text(line))
        self.toks.append(line)
        if not HEADER_START_RE.match(self.lines[0]):
            self.mode = OFF  # no header: parse_recipe finds no ingredient block
            return
        self.start, end = ingredient_block(self.lines)
        if end < len(self.lines):
            self._instructions(end, self.toks[end:])
        else:
            self.mode = BLOCK if end > self.start else HEADER

    def _check_long(self) -> None:
        """A line in the block longer than an ingredient line can be: the instructions have begun."""
        first = self.lex.vocab[self.partial[0]]
        if first == "mmmmm" or (len(first) >= 3 and set(first) == {"-"}):
            return  # a section heading ("MMMMM-----FILLING-----") may be of any length
        if len(self.text(self.partial).strip()) > LONG:
            self._instructions(len(self.lines), [])

    def _instructions(self, end: int, done: list[list[int]]) -> None:
        """The block ended at line ``end``; ``done``: the instruction lines already complete."""
        self.listed = [ln.strip() for ln in self.lines[self.start : end] if ln.strip()]
        if not self.listed:
            self.mode = OFF
            return
        self.mode = INSTR
        self.said = {w for line in [*done, self.partial] for t in line if (w := self.lex.word_of[t]) is not None}

    def bias_row(self) -> np.ndarray:
        """The slot's bias once its instructions began (the module doc)."""
        lex = self.lex
        V = len(lex.vocab)
        row = np.zeros(V, dtype=np.float32) if lex.penalty is None else lex.penalty.copy()
        if lex.penalty is not None:
            for w in set().union(*(words(line) for line in self.listed)):
                row[lex.tokens_of.get(w, _NONE)] = 0.0  # named by a listed line: not an extra item
        if lex.listed:
            heads = {h for h in map(head_noun, self.listed) if h} - self.said
            for h in heads:
                row[lex.tokens_of.get(h, _NONE)] = lex.listed
        return row


def closes(lex: Lexicon, prompt: list[int]) -> bool:
    """Whether a slot starting with ``prompt`` begins its instructions at once (a closed block)."""
    if lex.stages is None:
        return False
    doc = Document(lex)
    doc.feed(prompt)
    return doc.close()


def decoding_lexicon(g, vocab, tokenizer: str, words: frozenset, device, texts: list[list[int]], openers):
    """The decoder's tables (None: plain decoding): for the biases, or for text prompts (``texts``, their
    ids) whose ingredient list is the whole list (``generate.prompt_ingredients: all``) when some prompt
    ends with its block. ``openers()``: :func:`ingredient_openers` of the corpus, asked only then."""
    close = g.prompt_ingredients == "all" and bool(texts) and tokenizer == "recipe"
    lex = lexicon(g, vocab, tokenizer, words, device, close=close, openers=openers() if close else None)
    if lex is not None and not (g.listed_bias or g.unlisted_bias) and not any(closes(lex, t) for t in texts):
        return None  # nothing to steer
    return lex


class Tracker:
    """The slots' documents (host) and their bias, mode and rough line length (device) for one batch."""

    def __init__(self, lex: Lexicon, b: int, device: torch.device):
        self.lex, self.device = lex, device
        self.bias = torch.zeros(b, len(lex.vocab), dtype=torch.float32, device=device)
        self.mode = torch.zeros(b, dtype=torch.int8, device=device)
        self.chars = torch.zeros(b, dtype=torch.long, device=device)
        self.docs: list[Document | None] = [None] * b
        self.seen = [0] * b  # generated tokens each slot's document has read
        self.modes = np.zeros(b, dtype=np.int8)  # the host's copy of mode
        self.stage = torch.zeros(b, dtype=torch.long, device=device)  # a closed prompt's first line (Lexicon)
        self.staged = False  # some slot may have stage > 0 (checked now and then: no sync per step)
        self.steps = 0

    def begin(self, r: int, prompt: list[int], close: bool = False) -> None:
        """Slot ``r`` starts a job: its document reads the prompt (``close``: a block it ends with is the
        whole list, when the lexicon closes blocks)."""
        doc = Document(self.lex)
        doc.feed(prompt)
        self.docs[r], self.seen[r] = doc, 0
        self.bias[r].zero_()
        self.modes[r] = OFF
        closed = close and self.lex.stages is not None and doc.close()
        self.stage[r] = 2 if closed else 0
        self.staged |= closed
        self._publish(r)
        self.chars[r] = sum(_chars(self.lex.vocab[t]) for t in doc.partial)

    def _publish(self, r: int) -> None:
        """The device's copy of slot ``r``'s mode, and its bias row when the instructions just began."""
        doc = self.docs[r]
        if doc.mode == INSTR and self.modes[r] != INSTR:
            self.bias[r] = torch.from_numpy(doc.bias_row()).to(self.device)
        self.modes[r] = doc.mode
        self.mode[r] = doc.mode

    def keep(self, ks: torch.Tensor, keep: list[int]) -> None:
        """Only the slots ``keep`` (their indices ``ks`` on the device) go on."""
        self.bias, self.mode, self.chars, self.stage = (
            x.index_select(0, ks) for x in (self.bias, self.mode, self.chars, self.stage)
        )
        self.docs = [self.docs[r] for r in keep]
        self.seen = [self.seen[r] for r in keep]
        self.modes = self.modes[keep]

    def add(self, logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The biased logits, in ``out`` (float32, the logits' shape)."""
        out = torch.add(logits, self.bias, out=out)
        if self.staged:
            out.add_(self.lex.stages.index_select(0, self.stage))
        return out

    def after(self, gen: torch.Tensor, ngen: torch.Tensor, nxt: torch.Tensor, live: torch.Tensor) -> None:
        """After a step: end the bonus of the words the live slots named; let the host read the lines that
        ended (or grew long) before the instructions."""
        lex, modes = self.lex, self.modes
        reading = bool(((modes == HEADER) | (modes == BLOCK)).any())  # some slot before its instructions
        chars = lex.chars.index_select(0, nxt) if self.staged or reading else None  # a line's rough length
        if self.staged:
            on = live & (self.stage > 0)
            self.chars.add_(chars * on)
            self.stage.masked_fill_(on & (self.stage == 2), 1)  # its first token is drawn
            self.stage.masked_fill_(on & (self.chars > FIRST_LONG), 0)  # longer than an ingredient line: free
            self.steps += 1
            if self.steps % 8 == 0:
                self.staged = bool((self.stage > 0).any())
        if lex.listed and (modes == INSTR).any():
            wid = lex.word_id.index_select(0, nxt)
            on = live & (self.mode == INSTR) & (wid >= 0)
            cols = lex.members.index_select(0, wid.clamp(min=0))  # [b, K]
            vals = self.bias.gather(1, cols)
            self.bias.scatter_(1, cols, torch.where(on[:, None] & (vals > 0), 0.0, vals))
        if not reading:
            return
        before = live & ((self.mode == HEADER) | (self.mode == BLOCK))
        nl = nxt == lex.nl_id
        self.chars.add_(chars * before).masked_fill_(nl & before, 0)
        ask = before & (nl | ((self.mode == BLOCK) & (self.chars > LONG)))
        rows = ask.nonzero()[:, 0].tolist()
        if not rows:
            return
        sel = torch.tensor(rows, dtype=torch.long, device=gen.device)
        toks = gen.index_select(0, sel).cpu().numpy()
        upto = ngen.index_select(0, sel).cpu().tolist()
        for k, r in enumerate(rows):
            self.docs[r].feed(toks[k, self.seen[r] : upto[k]].tolist())
            self.seen[r] = upto[k]
            if self.docs[r].mode != modes[r]:
                self._publish(r)
