"""Tokenizers and the special tokens: a document's text to its token strings.

Tokenizers (``data.tokenizer``):

``recipe`` (default) follows the rules of the lecture's Keras script (the course example this project
  grew from: one-hot 50-word windows, LSTM(256)), in this order: lower case; spaces around punctuation
  (``word!`` -> ``word !``); newline symbols as tokens of their own (one ``NL`` token per newline,
  separated from words); runs of dashes kept as one word and single dashes spaced (``--`` stays one
  token, ``pine-apple`` -> ``pine - apple``); split on spaces; all spaces (and tabs) removed. A "word" is
  a maximal run of letters and digits (any script). We extend the dash rule to a few other characters
  that DOS-era recipes repeat as rules or ellipses (``...``, ``****``, ``====``, ``~~~~``, box-drawing
  ``────``): a run of one of them is one token, so a 70-character rule costs one token rather than 70.

``whitespace`` is for corpora that are already tokenized, one sentence per line: each line's
  space-separated words, then ``EOS`` (every line, blank ones included, as in the usual word-level LM
  set-up).

``char``: every character is a token (case and spaces kept), the char-rnn set-up.

``tokenize`` never adds the end-of-document token ``EOR``; the corpus builder appends it (recipe and char
tokenizers). ``hpcrnn.text.detokenize`` turns token streams back into text.
"""

from __future__ import annotations

import re

UNK = "<unk>"  # a word below data.min_count (data.rare: unk), or unknown to the vocabulary
EOR = "<eor>"  # end of recipe/document: closes every document (recipe and char tokenizers)
EOS = "<eos>"  # end of sentence/line (whitespace tokenizer)
NL = "\n"  # the newline token of the recipe tokenizer: one per newline
TAB = "\t"  # a column break of a MasterCook/MealMaster ingredient table (recipe tokenizer, keep_tabs)

TOKENIZERS = ("recipe", "whitespace", "char")
# Bumped whenever tokenize() or hpcrnn.text.repair.repair_mojibake() change their output: corpus files
# built by an older revision are then rebuilt rather than skipped as up to date.
TEXT_REVISION = 1

# Characters whose runs stay one token ("--", "...", "****", "────"). The lecture kept runs of dashes;
# the others are the rules and ellipses of the same DOS-era files.
_REPEATABLE = "-.*=~_#+!?─═━│║░▒▓■"
_REPEAT_ALT = "|".join(re.escape(c) + "+" for c in _REPEATABLE)
# Words first: they are the most frequent match, and the alternation is tried left to right.
_RECIPE_RE = re.compile(r"[^\W_]+|\n|" + _REPEAT_ALT + r"|[^\w\s]")
_RECIPE_TAB_RE = re.compile(r"[^\W_]+|\n|\t|" + _REPEAT_ALT + r"|[^\w\s]")


def tokenize(text: str, tokenizer: str = "recipe", keep_tabs: bool = False) -> list[str]:
    """Tokenize one document's text, without the closing EOR.

    ``keep_tabs`` (recipe tokenizer): each tab is a ``TAB`` token, as newlines are. The corpus builder
    sets it for MasterCook/MealMaster documents, whose ingredient tables it has rewritten with one tab
    between columns, so the table structure survives (the lecture dropped the formatting spaces, which
    dominated its fit; a tab a column costs three tokens a line)."""
    if tokenizer == "recipe":
        return (_RECIPE_TAB_RE if keep_tabs else _RECIPE_RE).findall(text.lower())
    if tokenizer == "whitespace":
        out: list[str] = []
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline ending the last line does not start another sentence
        for line in lines:
            out.extend(line.split())
            out.append(EOS)
        return out
    if tokenizer == "char":
        return list(text)
    raise ValueError(f"unknown tokenizer {tokenizer!r} (expected one of {', '.join(TOKENIZERS)})")


# Fast path of the corpus builder. Documents arrive without control characters (the reader removes
# them), so b"\x02" can mark document ends inside one regex scan. On ASCII text the bytes pattern below
# yields exactly the tokens of _RECIPE_RE (tests check this on the real corpus), faster.
DOC_SEP = b"\x02"
_ASCII_REPEAT_ALT = "|".join(re.escape(c) + "+" for c in _REPEATABLE if c.isascii())
_ASCII_REPEATABLE = re.escape("".join(c for c in _REPEATABLE if c.isascii())).encode()
# single punctuation before the runs: most punctuation then matches without trying a dozen run branches
_RECIPE_RE_BYTES = re.compile(rb"[a-z0-9]+|[^a-z0-9\s" + _ASCII_REPEATABLE + rb"]|\n|" + _ASCII_REPEAT_ALT.encode())
_RECIPE_TAB_RE_BYTES = re.compile(
    rb"[a-z0-9]+|[^a-z0-9\s" + _ASCII_REPEATABLE + rb"]|\n|\t|" + _ASCII_REPEAT_ALT.encode()
)


def tokenize_documents_bytes(texts: list[str], tokenizer: str = "recipe", keep_tabs: bool = False) -> list[bytes]:
    """Tokens of several documents as UTF-8 bytes, each document followed by ``DOC_SEP``.

    The same tokens as ``tokenize`` for text without control characters; used by the corpus builder,
    where the regex scan is most of its time.
    """
    out: list[bytes] = []
    if tokenizer != "recipe":
        for t in texts:
            out.extend(w.encode("utf-8") for w in tokenize(t, tokenizer))
            out.append(DOC_SEP)
        return out
    run: list[str] = []
    pat_bytes = _RECIPE_TAB_RE_BYTES if keep_tabs else _RECIPE_RE_BYTES
    pat = _RECIPE_TAB_RE if keep_tabs else _RECIPE_RE

    def flush_run() -> None:
        if run:
            joined = ("\x02".join(run) + "\x02").encode("ascii").lower()
            out.extend(pat_bytes.findall(joined))
            run.clear()

    for t in texts:
        if t.isascii():
            run.append(t)
        else:
            flush_run()
            out.extend(w.encode("utf-8") for w in pat.findall(t.lower()))
            out.append(DOC_SEP)
    flush_run()
    return out
