"""Tokenizers, the detokenizer and text repair.

Tokenizers (``data.tokenizer``):

``recipe`` (default) follows the lecture's rules, in this order:
  lower case; spaces around punctuation (``word!`` -> ``word !``); newline symbols as tokens of their own
  (one ``NL`` token per newline, separated from words); runs of dashes kept as one word and single dashes
  spaced (``--`` stays one token, ``pine-apple`` -> ``pine - apple``); split on spaces; all spaces (and
  tabs) removed. A "word" is a maximal run of letters and digits (any script). We extend the dash rule to
  a few other characters that DOS-era recipes repeat as rules or ellipses (``...``, ``****``, ``====``,
  ``~~~~``, box-drawing ``────``): a run of one of them is one token, so a 70-character rule costs one
  token rather than 70.

``whitespace`` is for corpora that are already tokenized, one sentence per line: each line's
  space-separated words, then ``EOS`` (every line, blank ones included, as in the usual word-level LM
  set-up).

``char``: every character is a token (case and spaces kept), the char-rnn set-up.

``tokenize`` never adds the end-of-document token ``EOR``; the corpus builder appends it (recipe and char
tokenizers). ``detokenize`` turns any token stream (with ``EOR``, ``EOS``, ``UNK``) back into text.

``repair_mojibake`` undoes the shared corpus' DOS damage: cp437 bytes once decoded as latin-1
(``350øF`` -> ``350°F``, ``«`` -> ``½``, ``ÄÄÄÄ`` -> ``────``), per document, only where the evidence is
clear. ftfy was tried and leaves this corpus untouched (its heuristics look for UTF-8 read as cp1252/latin-1,
not for cp437 read as latin-1), so the repair uses Python's own codecs: the candidate reading is
``text.encode("latin-1").decode("cp437")``.
"""

from __future__ import annotations

import re
import unicodedata

UNK = "<unk>"  # a word below data.min_count (data.rare: unk), or unknown to the vocabulary
EOR = "<eor>"  # end of recipe/document: closes every document (recipe and char tokenizers)
EOS = "<eos>"  # end of sentence/line (whitespace tokenizer)
NL = "\n"  # the newline token of the recipe tokenizer: one per newline
TAB = "\t"  # a column break of a MasterCook/MealMaster ingredient table (recipe tokenizer, keep_tabs)
SPECIALS = (UNK, EOR, EOS)

TOKENIZERS = ("recipe", "whitespace", "char")
# Bumped whenever tokenize() or repair_mojibake() change their output: corpus files built by an older
# revision are then rebuilt rather than skipped as up to date.
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
# yields exactly the tokens of _RECIPE_RE (tests check this on the real corpus) at about twice the speed.
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
    where the regex scan is most of the time (145 MB of text).
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


# ---------------------------------------------------------------- detokenizer

_WORD = re.compile(r"[^\W_]+\Z")
_DIGITS = re.compile(r"\d+\Z")
_ATTACH_LEFT = {",", ";", "!", "?", "%", ")", "]", "}", ":", "."}
_OPENERS = {"(", "[", "{"}
_GLUE_NEXT = {"$", "#"}
_FRACTIONS = {"½", "¼", "¾", "⅓", "⅔", "⅛"}
_DOMAINS = {"com", "org", "net", "edu", "gov", "uk", "co", "de", "ca", "au", "us", "mil"}

# MealMaster/MasterCook measure abbreviations: on an ingredient line, the word after amount and unit is
# the ingredient name, which the corpus capitalizes.
_UNITS = {
    "x",
    "ea",
    "t",
    "ts",
    "tsp",
    "tb",
    "tbs",
    "tbsp",
    "c",
    "cup",
    "cups",
    "pt",
    "qt",
    "ga",
    "gal",
    "oz",
    "fl",
    "lb",
    "lbs",
    "g",
    "kg",
    "mg",
    "ml",
    "l",
    "dl",
    "cl",
    "pk",
    "pkg",
    "cn",
    "can",
    "sm",
    "md",
    "lg",
    "ds",
    "pn",
    "dr",
    "sl",
    "bn",
    "ct",
    "cb",
    "ts.",
    "tb.",
    "c.",
    "tsp.",
    "tbsp.",
}


def _is_word(t: str) -> bool:
    return bool(_WORD.match(t))


def _is_num(t: str) -> bool:
    return bool(_DIGITS.match(t))


def _join_line(toks: list[str], state: dict) -> str:
    """Join the tokens of one line, reattaching punctuation; ``TAB`` tokens separate table cells."""
    if TAB in toks:
        cells, cur = [], []
        for t in toks:
            if t == TAB:
                cells.append(cur)
                cur = []
            else:
                cur.append(t)
        cells.append(cur)
        return "\t".join(_join_cell(c, state) for c in cells)
    return _join_cell(toks, state)


def _join_cell(toks: list[str], state: dict) -> str:
    out: list[str] = []
    glue = True  # no space before the first token of a line
    n = len(toks)
    for i, t in enumerate(toks):
        prev = toks[i - 1] if i > 0 else None
        nxt = toks[i + 1] if i + 1 < n else None
        space = not glue
        glue = False
        if (t in (".", ":") and prev is not None and prev[-1].isdigit() and nxt is not None and nxt[0].isdigit()) or (
            t == "," and prev is not None and _is_num(prev) and nxt is not None and len(nxt) == 3 and _is_num(nxt)
        ):
            space, glue = False, True  # 1.80, 0:45, 1,000 (but "12, 1995")
        elif t == "." and prev is not None and _is_word(prev) and nxt in _DOMAINS:
            space, glue = False, True  # aol.com
        elif t in ("/", "@", "_"):
            space, glue = False, True  # 1/2, and/or, someone@host, about_3/4_cup
        elif t == "-":
            if prev is None:
                glue = True  # "-Beaten": a MealMaster continuation line
            elif nxt is not None and (_is_word(prev) or prev in _FRACTIONS) and _is_word(nxt):
                space, glue = False, True  # pineapple-coconut, 9-inch, 1-2
        elif len(t) >= 5 and t == "-" * len(t):
            # long rules join the words they frame ("MMMMM-----FILLING-----"); short runs are dashes
            # in prose ("cooked -- do not boil")
            space, glue = False, True
        elif t == '"':
            if prev is not None and (_is_num(prev) or prev in _FRACTIONS):
                space = False  # 1/4" : inches, not a quotation
            elif state["dq_open"]:
                space, state["dq_open"] = False, False
            else:
                glue, state["dq_open"] = True, True
        elif t == "'":
            if prev is not None and _is_word(prev) and nxt is not None and _is_word(nxt):
                space, glue = False, True  # don't, cafe's, o'clock
            elif prev is not None and _is_word(prev):
                space = False
            else:
                glue = True
        elif t == "°":
            space = space and not (prev is not None and _is_num(prev))
            glue = nxt in ("f", "c")
        elif t in _FRACTIONS:
            space = space and not (prev is not None and _is_num(prev))
        elif t in _ATTACH_LEFT or (t[0] in ".!?" and t == t[0] * len(t)):
            space = False
        elif t in _OPENERS:
            glue = True
        elif t in _GLUE_NEXT:
            glue = True
        if out and not space:
            # never glue two tokens into one the tokenizer would read differently ("." + "." -> "..")
            last = out[-1][-1]
            first = t[0]
            if (last == first and not last.isalnum()) or (last.isalnum() and first.isalnum()):
                space = True
        if out and space:
            out.append(" ")
        out.append(t)
    return "".join(out)


_HEADER = re.compile(r"(title|categories|yield|servings)(\s*:\s*)(.*)\Z", re.I)
_SENTENCE_END = re.compile(r"[.!?]\Z")


def _capwords(s: str) -> str:
    return re.sub(r"[^\W\d_]+", lambda m: m.group(0)[:1].upper() + m.group(0)[1:], s)


def _sentence_case(line: str, cap_next: bool) -> tuple[str, bool]:
    """Capitalise the first word of each sentence (and a lone "i") in an instruction line; the flag
    carries "a sentence ended" from line to line."""

    def fix(m: re.Match) -> str:
        nonlocal cap_next
        w = m.group(0)
        if w in (".", "!", "?"):
            cap_next = True
            return w
        if cap_next and w[0].isalpha():
            w = w[0].upper() + w[1:]
        if w == "i":
            w = "I"
        cap_next = False
        return w

    return re.sub(r"[^\W_]+|[.!?](?=\s|$)", fix, line), cap_next


def _cap_first(s: str) -> str:
    m = re.search(r"[^\W\d_]", s)
    if not m:
        return s
    return s[: m.start()] + s[m.start()].upper() + s[m.start() + 1 :]


_AMOUNT_UNIT = re.compile(
    r"^([\d/ .½¼¾-]*\s*)((?:"
    + "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
    + r")\s+)?(?=[^\W\d_])",
    re.I,
)


_MM_BANNER_RE = re.compile(r"\s*(?:mmmmm|-----)-*\s*recipe via meal\s*-\s*master", re.I)
_MC_BANNER_RE = re.compile(r"\s*\*\s*exported from mastercook\s*\*", re.I)
_TABLE_HEAD_RE = re.compile(r"amount\tmeasure\tingredient", re.I)


def _layout_of(lines: list[str]) -> str:
    """The file layout a (lower-cased) document came from: ``mealmaster``, ``mastercook-export`` (the
    ``* Exported from MasterCook *`` text export), ``mastercook`` (the lecture's tab table) or ``plain``."""
    first = next((x for x in lines if x.strip()), "")
    if _MM_BANNER_RE.match(first):
        return "mealmaster"
    if _MC_BANNER_RE.match(first):
        return "mastercook-export"
    if any(_TABLE_HEAD_RE.match(x) for x in lines[:40]):
        return "mastercook"
    return "plain"


def _capitalize_structured(lines: list[str], layout: str) -> list[str]:
    """Capitals for MealMaster/MasterCook documents: banner, title, header keys, table, sentences."""
    out = list(lines)
    title_done = False
    cap_next = True
    for j, line in enumerate(out):
        s = line.strip()
        if not s:
            cap_next = True
            continue
        if _MM_BANNER_RE.match(line):
            out[j] = "MMMMM----- Recipe via Meal-Master (tm)"
            continue
        if _MC_BANNER_RE.match(line):
            out[j] = "* Exported from MasterCook *"
            continue
        if s.lower() == "mmmmm" or _SECTION.match(s):
            out[j] = line.upper()
            continue
        m = _HEADER.match(s)
        if m:
            key, _, rest = m.groups()
            if key.lower() == "title":
                rest = _capwords(rest)
            elif key.lower() == "categories":
                rest = ", ".join(_cap_first(p.strip()) for p in rest.split(","))
            else:
                rest = _cap_first(rest)
            out[j] = key.capitalize() + ": " + rest
            title_done = title_done or key.lower() == "title"
            continue
        if "\t" in line:
            cells = line.split("\t")
            if _TABLE_HEAD_RE.match(line):
                out[j] = "\t".join(_capwords(c) for c in cells)
            elif layout == "mealmaster" and len(cells) >= 3:
                cells[2] = _cap_first(cells[2])  # MealMaster capitalizes ingredient names
                out[j] = "\t".join(cells)
            continue
        if not title_done and layout != "mealmaster":
            out[j] = _capwords(line)  # a MasterCook recipe's first line is its title
            title_done = True
            continue
        if re.match(r"\s*[^\W\d_][\w ]*\s*:", line) and layout == "mastercook-export":
            out[j] = _cap_first(line)  # "Recipe By : ..." header lines
            continue

        out[j], cap_next = _sentence_case(line, cap_next)
    return [line.replace("<Unk>", UNK).replace("<UNK>", UNK) for line in out]


def _render_layout(lines: list[str], layout: str) -> list[str]:
    """Re-create the columns of the source layout from tab-separated rows: MealMaster's fixed columns
    (amount right-aligned in 7, unit in 2, header keys right-aligned, directions indented by two) and the
    MasterCook text export's (amount, measure at column 12, ingredient at 24); the lecture's MasterCook
    file has tab-separated columns, which the rows already are."""
    if layout == "mealmaster":
        out = []
        for line in lines:
            m = _HEADER.match(line.strip())
            if "\t" in line:
                c = line.split("\t") + ["", ""]
                out.append(f"{c[0]:>7} {c[1]:<2} {c[2]}".rstrip())
            elif m:
                out.append(f"{m.group(1):>11}: {m.group(3)}")
            elif not line.strip() or line.startswith("MMMMM"):
                out.append(line)
            else:
                out.append("  " + line)
        return out
    if layout == "mastercook-export":
        out = []
        title_done = False
        for line in lines:
            if "\t" in line:
                c = line.split("\t") + ["", ""]
                if _TABLE_HEAD_RE.match(line):
                    out.append(f"  {c[0]:<8}{c[1]:<14}{c[2]}".rstrip())
                elif re.fullmatch(r"[-\t]+", line):
                    out.append("--------  ------------  --------------------------------")
                else:
                    out.append(f"{c[0]:>6}{'':6}{c[1]:<12}{c[2]}".rstrip())
            elif not title_done and line.strip() and not _MC_BANNER_RE.match(line):
                out.append(" " * 25 + line)
                title_done = True
            else:
                out.append(line)
        return out
    return lines


def _capitalize_document(lines: list[str]) -> list[str]:
    """Sensible capitals for a lower-cased recipe: header keys, the title, ingredient names, sentences."""
    layout = _layout_of(lines)
    if layout != "plain":
        return _capitalize_structured(lines, layout)
    out = list(lines)
    i = 0
    while i < len(out) and _HEADER.match(out[i]):
        key, sep, rest = _HEADER.match(out[i]).groups()
        if key.lower() == "title":
            rest = _capwords(rest)
        elif key.lower() == "categories":
            rest = ", ".join(_cap_first(p.strip()) for p in rest.split(","))
        out[i] = key.capitalize() + ": " + rest
        i += 1
    start, end = ingredient_block(out) if i else (i, i)
    for j in range(start, end):
        if _SECTION.match(out[j]):
            out[j] = out[j].upper()  # MMMMM-----FILLING-----
            continue
        m = _AMOUNT_UNIT.match(out[j])
        if m:
            k = m.end()
            out[j] = out[j][:k] + out[j][k].upper() + out[j][k + 1 :]
        else:
            out[j] = _cap_first(out[j])
    cap_next = True
    for j in range(max(end, i), len(out)):
        line = out[j]
        if not line.strip():
            cap_next = True
            continue

        out[j], cap_next = _sentence_case(line, cap_next)
    return [line.replace("<Unk>", UNK).replace("<UNK>", UNK) for line in out]


_HEAD_BLOCK = re.compile(r"(?:[ \t]*(?:title|categories|yield|servings)[ \t]*:[^\n]*\n)+", re.I)
_BLANKS = re.compile(r"(?:[ \t]*\n)*")
# Lines of stripped length 1..40, or MealMaster section headings ("MMMMM-----FILLING-----").
_SHORT_LINES = re.compile(
    r"(?:[ \t]*\S(?:[^\n]{0,38}\S)?[ \t]*\n|[ \t]*(?:mmmmm)?[ \t]*-{3,}[^\n]*?[^\W\d_][^\n]*?-{3,}[ \t]*\n)*", re.I
)
_SECTION = re.compile(r"(?:mmmmm)?\s*-{3,}.*[^\W\d_].*-{3,}\Z", re.I)
_SENTENCE_LINE = re.compile(r"^[ \t]*[^\d\s][^\n]*?\S[ \t]+\S[^\n]*?[ \t]\S[^\n]*\.[ \t]*$", re.M)


_MM_ROW = re.compile(r"(?:[ \d/.-]{7} [A-Za-z ]{2} \S.*|[^\t\n]*\t[^\n]*)\Z")
_TABLE_HEAD_ANY = re.compile(r"\s*amount\s+measure\s+ingredient", re.I)
_RULE_LINE = re.compile(r"[-\s]*-[-\s]*\Z")


def _structured_block(lines: list[str]) -> tuple[int, int]:
    first = next((x for x in lines if x.strip()), "")
    if _MM_BANNER_RE.match(first):
        rows = [i for i, x in enumerate(lines) if x.strip() and not _HEADER.match(x.strip()) and _MM_ROW.match(x)]
        return (rows[0], rows[-1] + 1) if rows else (0, 0)
    head = next((i for i, x in enumerate(lines[:60]) if _TABLE_HEAD_ANY.match(x)), None)
    if head is None:
        return 0, 0
    i = head + 1
    while i < len(lines) and lines[i].strip() and _RULE_LINE.match(lines[i]):
        i += 1
    j = i
    while j < len(lines) and lines[j].strip():
        j += 1
    return (i, j) if j > i else (0, 0)


def ingredient_block(lines) -> tuple[int, int]:
    """The ingredient lines of a MealMaster-style recipe, as a half-open range of line indices.

    After the header lines (``Title:``, ``Categories:``, ``Yield:``/``Servings:``) come short ingredient
    lines (``1/2 c  Chopped parsley``, ``Salt``, a ``Dressing:`` sub-heading); the block ends at the first
    blank line, the first line longer than a MealMaster ingredient column (40 characters) or the first
    short sentence of three or more words ending in a full stop (``Combine salad ingredients.``).
    ``(0, 0)`` when the text has no header. ``lines`` is a whole document or a list of its lines.

    MealMaster files (a ``MMMMM----- Recipe via Meal-Master`` banner first): the ingredient rows are the
    lines in its columns (``amount`` in 7, ``unit`` in 2) or, in the corpus' rewritten form, with tabs;
    MasterCook files: the rows under the ``Amount Measure Ingredient`` table header and its rule, up to the
    first blank line.

    Regexes rather than a loop over lines: the corpus builder calls this for each of 141k recipes.
    """
    text = lines if isinstance(lines, str) else "\n".join(lines) + "\n"
    m = _HEAD_BLOCK.match(text)
    if not m:
        if "\t" in text or "eal-Master" in text or "eal-master" in text or "mount" in text:
            return _structured_block(text.split("\n"))
        return 0, 0
    pos = _BLANKS.match(text, m.end()).end()
    first = text.count("\n", 0, pos)
    end_pos = _SHORT_LINES.match(text, pos).end()
    sent = _SENTENCE_LINE.search(text, pos, end_pos)
    if sent:
        end_pos = sent.start()
    return first, first + text.count("\n", pos, end_pos)


def detokenize(tokens: list[str], tokenizer: str = "recipe", capitalize: bool = True, layout: bool = True) -> str:
    """Turn a token stream back into readable text.

    ``EOR`` ends a document (documents are separated by a blank line), ``EOS`` ends a line of the
    whitespace tokenizer, ``UNK`` is written as ``<unk>`` (the replacement character ``\\ufffd`` for the
    char tokenizer). For ``recipe`` streams punctuation is reattached, lines restored and, with
    ``capitalize``, header keys, titles, ingredient names and sentence starts get their capitals back.
    ``TAB`` tokens (MasterCook/MealMaster tables) separate columns; with ``layout``, a document that opens
    like a MealMaster recipe or a MasterCook text export is set in that file's fixed columns again (the
    layout is read from the tokens themselves, so callers need not know the corpus format).
    """
    if tokenizer == "char":
        parts: list[str] = []
        pending = False  # an EOR was seen: the next document starts after a blank line
        for t in tokens:
            if t == EOR:
                if parts and parts[-1] != "\n":
                    parts.append("\n")
                pending = bool(parts)
                continue
            if pending:
                parts.append("\n")
                pending = False
            parts.append("\ufffd" if t == UNK else t)
        return "".join(parts)
    if tokenizer == "whitespace":
        lines, cur = [], []
        for t in tokens:
            if t == EOS:
                lines.append(" ".join(cur))
                cur = []
            elif t == EOR:
                if cur:
                    lines.append(" ".join(cur))
                    cur = []
                lines.append("")
            else:
                cur.append(t)
        text = "\n".join(lines)
        if cur:
            text += ("\n" if lines else "") + " ".join(cur)
        elif lines:
            text += "\n"
        return text
    if tokenizer != "recipe":
        raise ValueError(f"unknown tokenizer {tokenizer!r} (expected one of {', '.join(TOKENIZERS)})")
    docs: list[str] = []
    cur_doc: list[str] = []
    closed = []

    def flush_doc(ended: bool) -> None:
        state = {"dq_open": False}
        lines, line = [], []
        for t in cur_doc:
            if t == NL:
                lines.append(_join_line(line, state))
                line = []
            elif t == EOS:
                continue
            else:
                line.append(t)
        last_open = bool(line)
        if line:
            lines.append(_join_line(line, state))
        if capitalize:
            lines = _capitalize_document(lines)
        if layout:
            lines = _render_layout(lines, _layout_of(lines))
        text = "\n".join(lines)
        if not last_open and lines:
            text += "\n"
        if ended:
            text = text.rstrip("\n") + "\n"
        docs.append(text)
        closed.append(ended)

    for t in tokens:
        if t == EOR:
            flush_doc(True)
            cur_doc = []
        else:
            cur_doc.append(t)
    if cur_doc or not docs:
        flush_doc(False)
        if not cur_doc:
            docs.pop()
            closed.pop()
    return "\n".join(docs)


# ---------------------------------------------------------------- mojibake repair

# The cp437 reading of each latin-1 character (0x80-0xFF), for counter-evidence checks.
_CP437 = {chr(b): bytes([b]).decode("cp437") for b in range(0x80, 0x100)}


def _is_latin_letter(c: str) -> bool:
    try:
        return c.isalpha() and unicodedata.name(c).startswith("LATIN")
    except ValueError:
        return False


# Evidence that a document is cp437 read as latin-1. Each pattern names the characters to re-read.
_UNIT = (
    r"(?:\d|c\b|cups?|ts\b|tsp|tb\b|tbsp|teasp|tables|t\b|lbs?\b|oz\b|pounds?|inch|in\b|\"|hours?|"
    r"min|qt\b|pt\b|gal|x\b|ea\b)"
)
# Every alternative starts with the suspicious character and looks around it afterwards, so the scan
# skips ASCII text at the speed of a character-class test (lookbehinds first made it 10x slower).
_EVIDENCE = re.compile(
    r"ø(?:(?<=\dø)|(?<=\d\sø)|(?=\s?[FC]\b))"  # 350øF: ø is cp437 0xF8, the degree sign
    r"|[«¬](?:(?<=\d[«¬])|(?<![^\s(][«¬])(?=[ -]?" + _UNIT + r"))"  # 1«, « cup: ½ and ¼
    r"|[\xb0-\xdf]{3,}"  # ÄÄÄÄ, ÍÍÍÍ, °±²³: runs of box-drawing and shading characters
    r"|[\x80-\x9f]"  # C1 control characters never occur in real latin-1 text: cp437 letters (saut\x82)
    r"|[\xa0-\xa5](?<=[A-Za-z][\xa0-\xa5])(?=[A-Za-z])"  # jalape¤o: cp437 0xA4 is ñ
    r"|þ(?<!\Sþ)(?=\s|$)"  # þ as a bullet: cp437 0xFE is ■
    r"|ÿ+(?=\s|$)|ÿ(?<!\Sÿ)"  # ÿ is cp437's no-break space
    r"|ß(?<![^\n]ß)(?=\s)",  # ß as a bullet at the start of a line: cp437 0xDF is ▀
    re.I,
)

# Evidence that the latin-1 reading is right (a cp437 re-read would break it).
_LATIN1_OK = re.compile(
    r"[°½¼¾](?:(?<=\d[°½¼¾])|(?<=\d\s[°½¼¾]))|[½¼¾](?=[ -]?" + _UNIT + r")"
    r"|[®©](?<=[A-Za-z][®©])",
    re.I,
)

_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_C1 = re.compile(r"[\x80-\x9f]")
_C1_CODECS = ("cp437", "cp1252", "mac_roman")  # in order of preference on a tie


def _c1_score(d: str, before: str, after: str) -> int:
    """How plausible the character ``d`` is between ``before`` and ``after``."""
    if d == "\ufffd" or unicodedata.category(d) == "Cc":
        return -2
    if d.isalpha():
        sides = [c for c in (before, after) if c.isalpha()]
        if not sides:
            return 0
        if all(c.islower() for c in sides):
            return 1 if d.islower() else -1
        if all(c.isupper() for c in sides):
            return 1 if d.isupper() else -1
        return 0
    if d in "\u2019\u2018" and before.isalpha():
        return 1  # don\x92t: the cp1252 apostrophe
    return 0


def _c1_codec(lat: str, positions: list[int], prefer: str = "cp437") -> str:
    """Pick the codec that reads a document's C1 bytes (0x80-0x9F) most plausibly.

    These bytes are letters in cp437 (``saut\x82``, the corpus' usual damage) but also in Mac Roman
    (``saut\x8e``) and quotes or dashes in cp1252 (``don\x92t``), and all three occur in the shared corpus.
    A letter whose case disagrees with its neighbours (``sautÄ``) or a control character counts against a
    reading.
    """
    best, best_score = prefer, None
    for codec in (prefer,) + tuple(c for c in _C1_CODECS if c != prefer):
        score = 0
        for i in positions:
            d = lat[i].encode("latin-1").decode(codec, errors="replace")
            before = lat[i - 1] if i > 0 else " "
            after = lat[i + 1] if i + 1 < len(lat) else " "
            score += _c1_score(d, before, after)
        if best_score is None or score > best_score:
            best, best_score = codec, score
    return best


def repair_mojibake(text: str) -> tuple[str, int]:
    """Repair cp437-read-as-latin-1 mojibake where the evidence is clear; return (text, characters changed).

    Evidence (see ``_EVIDENCE``): a digit before ``ø`` or ``ø`` before F/C (degrees), ``«``/``¬`` next to
    digits or units (½, ¼), runs of box-drawing characters (``ÄÄÄÄ``), C1 control characters, ``¤``
    inside a word (ñ), ``þ``/``ß`` bullets, ``ÿ`` as a space. Counter-evidence: a Latin letter inside a word
    that the cp437 reading would turn into something else (``Béarnaise`` -> ``BΘarnaise``), or latin-1
    characters used as they should be (``350°``, ``1½``, ``Cool Whip®``).

    No evidence: unchanged. Evidence only: the whole document is re-read as cp437. Both: only the
    characters in the evidence spans are re-read, so ``350øF`` and ``sauté`` in one document both come out
    right. Text with characters outside latin-1 (and cp1252, for raw bytes decoded by the fallback) is left
    alone: it cannot be cp437 bytes read as latin-1.
    """
    if text.isascii():
        return text, 0
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        try:
            raw = text.encode("cp1252")  # raw bytes the reader's fallback decoded as cp1252
        except UnicodeEncodeError:
            return text, 0
    # Work on the latin-1 reading of the bytes, so the patterns see one character per byte.
    lat = raw.decode("latin-1")
    spans = [m.span() for m in _EVIDENCE.finditer(lat)]
    if not spans:
        return text, 0
    marked = bytearray(len(lat))
    for a, b in spans:
        marked[a:b] = b"\x01" * (b - a)
    counter = bool(_LATIN1_OK.search(lat))
    if not counter:
        n = len(lat)
        for m in _NON_ASCII.finditer(lat):
            i, c = m.start(), m.group()
            if marked[i]:
                continue
            if _is_latin_letter(c) and not _is_latin_letter(_CP437[c]):
                near = (i > 0 and lat[i - 1].isascii() and lat[i - 1].isalpha()) or (
                    i + 1 < n and lat[i + 1].isascii() and lat[i + 1].isalpha()
                )
                if near:
                    counter = True  # Béarnaise: a real accented word
                    break
    cand = raw.decode("cp437")
    if not counter:
        chars = list(cand)
    else:
        chars = list(text)
        for a, b in spans:
            chars[a:b] = cand[a:b]
    c1 = [m.start() for m in _C1.finditer(lat)]
    if c1:
        doc_codec = _c1_codec(lat, c1)
        for i in c1:
            # each byte by its own most plausible reading; the document's reading breaks ties
            chars[i] = _c1_codec(lat, [i], prefer=doc_codec)
            chars[i] = raw[i : i + 1].decode(chars[i], errors="replace")
    out = "".join(chars)
    changed = sum(map(str.__ne__, text, out))
    return out, changed
