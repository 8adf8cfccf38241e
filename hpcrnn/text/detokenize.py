"""The detokenizer: a token stream back to readable recipe text (lines, punctuation, capitals, columns).

``detokenize`` turns any token stream (with ``EOR``, ``EOS``, ``UNK``) back into text, in phases for the
recipe tokenizer: tokens to lines (punctuation reattached), capitals (header keys, titles, ingredient
names, sentence starts), then the source file's columns (MealMaster, MasterCook), each document alone.
"""

from __future__ import annotations

import re

from hpcrnn.text import formats as F
from hpcrnn.text.tokenize import EOR, EOS, NL, TAB, TOKENIZERS, UNK

# ---------------------------------------------------------------- tokens to lines

_WORD_TOKEN = re.compile(r"[^\W_]+\Z")
_DIGITS = re.compile(r"\d+\Z")
_ATTACH_LEFT = {",", ";", "!", "?", "%", ")", "]", "}", ":", "."}
_OPENERS = {"(", "[", "{"}
_GLUE_NEXT = {"$", "#"}
_FRACTIONS = {"½", "¼", "¾", "⅓", "⅔", "⅛"}
_DOMAINS = {"com", "org", "net", "edu", "gov", "uk", "co", "de", "ca", "au", "us", "mil"}


def _is_word(t: str) -> bool:
    return bool(_WORD_TOKEN.match(t))


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
        if out and not space and _would_merge(out[-1][-1], t[0]):
            space = True  # never glue two tokens into one the tokenizer would read differently
        if out and space:
            out.append(" ")
        out.append(t)
    return "".join(out)


def _would_merge(last: str, first: str) -> bool:
    """Whether a token starting with ``first`` glued to one ending in ``last`` would read as another token
    ("." + "." -> "..", "1" + "2" -> "12")."""
    return (last == first and not last.isalnum()) or (last.isalnum() and first.isalnum())


# ---------------------------------------------------------------- capitals


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
        if F.MM_BANNER_RE.match(line):
            out[j] = F.MM_BANNER
            continue
        if F.MC_BANNER_RE.match(line):
            out[j] = F.MC_BANNER
            continue
        if s.lower() == "mmmmm" or F.SECTION_RE.match(s):
            out[j] = line.upper()
            continue
        m = F.HEADER_RE.match(s)
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
            if F.TABLE_HEAD_TAB_RE.match(line):
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


def _capitalize_document(lines: list[str]) -> list[str]:
    """Sensible capitals for a lower-cased recipe: header keys, the title, ingredient names, sentences."""
    layout = F.layout_of(lines)
    if layout != "plain":
        return _capitalize_structured(lines, layout)
    out = list(lines)
    i = 0
    while i < len(out) and F.HEADER_RE.match(out[i]):
        key, sep, rest = F.HEADER_RE.match(out[i]).groups()
        if key.lower() == "title":
            rest = _capwords(rest)
        elif key.lower() == "categories":
            rest = ", ".join(_cap_first(p.strip()) for p in rest.split(","))
        out[i] = key.capitalize() + ": " + rest
        i += 1
    start, end = F.ingredient_block(out) if i else (i, i)
    for j in range(start, end):
        if F.SECTION_RE.match(out[j]):
            out[j] = out[j].upper()  # MMMMM-----FILLING-----
            continue
        m = F.AMOUNT_UNIT_RE.match(out[j])
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


# ---------------------------------------------------------------- columns


def _render_layout(lines: list[str], layout: str) -> list[str]:
    """Re-create the columns of the source layout from tab-separated rows: MealMaster's fixed columns
    (amount right-aligned in 7, unit in 2, header keys right-aligned, directions indented by two) and the
    MasterCook text export's (amount, measure at column 12, ingredient at 24); the lecture's MasterCook
    file (allrecipes.txt, see hpcrnn.text.formats) has tab-separated columns, which the rows already are."""
    if layout == "mealmaster":
        out = []
        for line in lines:
            m = F.HEADER_RE.match(line.strip())
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
                if F.TABLE_HEAD_TAB_RE.match(line):
                    out.append(f"  {c[0]:<8}{c[1]:<14}{c[2]}".rstrip())
                elif re.fullmatch(r"[-\t]+", line):
                    out.append("--------  ------------  --------------------------------")
                else:
                    out.append(f"{c[0]:>6}{'':6}{c[1]:<12}{c[2]}".rstrip())
            elif not title_done and line.strip() and not F.MC_BANNER_RE.match(line):
                out.append(" " * 25 + line)
                title_done = True
            else:
                out.append(line)
        return out
    return lines


# ---------------------------------------------------------------- the stream


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
        return _detokenize_chars(tokens)
    if tokenizer == "whitespace":
        return _detokenize_sentences(tokens)
    if tokenizer != "recipe":
        raise ValueError(f"unknown tokenizer {tokenizer!r} (expected one of {', '.join(TOKENIZERS)})")
    docs: list[str] = []
    cur_doc: list[str] = []
    for t in tokens:
        if t == EOR:
            docs.append(_render_document(cur_doc, True, capitalize, layout))
            cur_doc = []
        else:
            cur_doc.append(t)
    if cur_doc:  # an unfinished last document
        docs.append(_render_document(cur_doc, False, capitalize, layout))
    return "\n".join(docs)


def _detokenize_chars(tokens: list[str]) -> str:
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


def _detokenize_sentences(tokens: list[str]) -> str:
    """The whitespace tokenizer's stream: one line per ``EOS``, a blank line per ``EOR``."""
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


def _render_document(tokens: list[str], ended: bool, capitalize: bool, layout: bool) -> str:
    """One recipe-tokenizer document: lines, then capitals, then columns. ``ended``: an ``EOR`` closed it,
    so it ends with exactly one newline."""
    state = {"dq_open": False}  # a double quote is open across the document's lines
    lines, line = [], []
    for t in tokens:
        if t == NL:
            lines.append(_join_line(line, state))
            line = []
        elif t != EOS:
            line.append(t)
    last_open = bool(line)
    if line:
        lines.append(_join_line(line, state))
    if capitalize:
        lines = _capitalize_document(lines)
    if layout:
        lines = _render_layout(lines, F.layout_of(lines))
    text = "\n".join(lines)
    if not last_open and lines:
        text += "\n"
    if ended:
        text = text.rstrip("\n") + "\n"
    return text
