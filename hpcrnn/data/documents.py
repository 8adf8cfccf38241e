"""Documents of one input: split a source into documents, repair them, canonicalise MealMaster/MasterCook.

Documents (``data.format``): ``plain`` splits at ``data.document_start`` (a regex, multi-line mode; without
it each file is one document). ``mealmaster`` and ``mastercook`` split at their own recipe starts
(``hpcrnn.text.formats``) and rewrite the ingredient table with one tab between columns (MealMaster's
two-column lines become two lines); the recipe tokenizer then keeps each tab as a ``\t`` token, so the
table survives and the detokenizer can set the columns again. ``auto`` (the default) is ``plain`` when
``data.document_start`` is given, else the format each file opens with (its first non-blank line);
naming a format a file does not open with is an error.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from hpcrnn.data.sources import ReadStats, iter_text_chunks
from hpcrnn.errors import InputError
from hpcrnn.text import formats as F
from hpcrnn.text.repair import repair_mojibake


def prepared_documents(
    path: Path, document_start: str | None, fmt: str, repair: bool, stats: ReadStats
) -> Iterator[tuple[str, bool]]:
    """(text, structured) of each document of one input file as the tokenizer sees it: decoded, cleaned,
    mojibake repaired, MealMaster/MasterCook tables canonicalised; ``structured``: keep tab tokens. The one
    path from a file to documents, for preprocessing and for scoring any text (hpcrnn.evaluate)."""
    for raw in iter_documents(path, document_start, stats, fmt):
        kind = stats.formats[str(path)]
        text = prepare_document(raw, kind, repair, stats)
        if text:
            yield text, kind != "plain"


def prepare_document(raw: str, kind: str, repair: bool, stats: ReadStats) -> str:
    """One document's text as the tokenizer sees it ("" for none): cleaned, mojibake repaired (counted in
    ``stats``), a MealMaster/MasterCook table canonicalised. Whole files and slices of one (data.shards)
    read documents through this one function."""
    text = clean_document(raw)
    if not text:
        return ""
    if repair and not text.isascii():
        text, n_rep = repair_mojibake(text)
        if n_rep:
            stats.repaired_documents += 1
            stats.repaired_chars += n_rep
            text = unicodedata.normalize("NFC", text)
    if kind == "mealmaster":
        text = clean_document(_canonical_mealmaster(text))
    elif kind == "mastercook":
        text = clean_document(_canonical_mastercook(text))
    return text


def _canonical_mealmaster(text: str) -> str:
    """A MealMaster recipe with its fixed columns as tabs: header lines ``Title: X``, ingredient lines
    ``amount<TAB>unit<TAB>ingredient`` (two-column layouts become two lines), directions unindented."""
    out = []
    for line in text.split("\n"):
        s = line.strip()
        if re.match(F.MM_START, s, re.I):
            out.append(F.MM_BANNER)
            continue
        m = F.MM_HEADER_RE.match(line)
        if m and len(out) < 8 and not any("\t" in o for o in out):
            out.append(f"{m.group(1).capitalize()}: {m.group(2).strip()}")
            continue
        k = F.MM_SECOND_COLUMN
        cols = [line[:k], line[k:]] if len(line) > k and F.MM_INGREDIENT_RE.match(line[k:]) else [line]
        rows = [F.MM_INGREDIENT_RE.match(c.rstrip()) for c in cols]
        if all(rows):
            for r in rows:
                out.append(f"{r['amt'].strip()}\t{r['unit'].strip()}\t{r['ing'].strip()}")
            continue
        out.append(s)
    return "\n".join(out)


def _canonical_mastercook(text: str) -> str:
    """A MasterCook recipe with its ingredient table as tab-separated columns. The lecture's export
    (allrecipes.txt, see hpcrnn.text.formats) is that already; the ``* Exported from MasterCook *`` text
    export has fixed columns, cut where its dashed rule under the header has gaps (tabs in rows expanded
    to 8 columns first)."""
    lines = text.split("\n")
    out = []
    cuts = None
    for i, line in enumerate(lines):
        if "\t" in line and F.TABLE_HEAD_RE.match(line) is None and cuts is None:
            out.append("\t".join(c.strip() for c in line.split("\t")) if line.strip() else "")
            continue
        if (
            F.TABLE_HEAD_RE.match(line)
            and "\t" not in line
            and i + 1 < len(lines)
            and F.RULE_LINE_RE.match(lines[i + 1])
        ):
            rule = lines[i + 1]
            cuts = [m.start() for m in re.finditer(r"-+", rule)]
            out.append("\t".join(line[a:b].strip() for a, b in zip(cuts, cuts[1:] + [None])))
            continue
        if cuts is not None:
            if not line.strip():
                if out and out[-1] and "\t" in out[-1]:
                    cuts = None  # the table ends at its first blank line
                out.append("")
                continue
            row = line.expandtabs(8)
            cells = [row[a:b].strip() for a, b in zip(cuts, cuts[1:] + [None])]
            cells[-1] = row[cuts[-1] :].strip() if len(row) > cuts[-1] else ""
            # text left of the first cut (a wide amount) joins the first cell
            if cuts[0] > 0 and row[: cuts[0]].strip():
                cells[0] = (row[: cuts[0]].strip() + " " + cells[0]).strip()
            out.append("\t".join(cells))
            continue
        out.append(line.strip())
    return "\n".join(out)


def iter_documents(path: Path, document_start: str | None, stats: ReadStats, fmt: str = "plain") -> Iterator[str]:
    """Documents of one file: split at each match of ``document_start`` (multi-line regex), or the whole
    file. Text before the first match is not a document (counted in ``stats.preamble_chars``).

    ``fmt``: ``plain`` as described; ``mealmaster`` and ``mastercook`` split at their own recipe starts
    (``document_start`` is not used); ``auto`` is ``plain`` when ``document_start`` is given, else the
    format the file opens with. The format used is recorded in ``stats.formats``; a file that does not
    open with a recipe of a format asked for by name is an error."""
    chunks = iter_text_chunks(path, stats)
    first = next(chunks, "")
    used = _format_of(path, first, fmt, document_start)
    stats.formats[str(path)] = used
    if used == "mealmaster":
        document_start = F.MM_START
    elif used == "mastercook":
        document_start = F.MC_START
    chunks = itertools.chain([first], chunks)
    if not document_start:
        text = "".join(chunks)
        if text.strip():
            yield text
        return
    yield from _split_at(chunks, document_start, re.M | (re.I if used != "plain" else 0), path, stats)


def _format_of(path: Path, first: str, fmt: str, document_start: str | None) -> str:
    """The format a file's documents are read in (``data.format`` resolved for this file)."""
    found = F.detect_format(first)
    if fmt in ("mealmaster", "mastercook") and found != fmt and first.strip():
        what = (
            "a 'MMMMM----- Recipe via Meal-Master' line"
            if fmt == "mealmaster"
            else "a '* Exported from MasterCook *' line or an 'Amount<tab>Measure<tab>Ingredient' table"
        )
        raise InputError(
            f"{path}: not a {fmt} file: it does not open with {what} (data.format: {fmt}; use auto or plain)"
        )
    # auto: a document_start the user gave says how to split; otherwise what the file opens with
    return (found if not document_start else "plain") if fmt == "auto" else fmt


def _split_at(chunks: Iterator[str], document_start: str, flags: int, path: Path, stats: ReadStats) -> Iterator[str]:
    """Documents of a file's text chunks, each starting at a match of ``document_start``."""
    pat = re.compile(document_start, flags)
    # "^X" in multi-line mode matches after a newline; "\n(?:X)" says the same with a literal first
    # character, which the regex engine scans for much faster.
    later = re.compile("\n(?:" + document_start[1:] + ")", flags) if document_start.startswith("^") else None
    buf = ""
    started = False
    saw_text = False
    for chunk in chunks:
        buf += chunk
        pos = 0
        if not started:
            m = pat.search(buf)
            if not m:
                # keep only a bounded tail while looking for the first match
                if len(buf) > (1 << 16):
                    stats.preamble_chars += len(buf[: -(1 << 16)].strip())
                    buf = buf[-(1 << 16) :]
                    saw_text = True
                continue
            stats.preamble_chars += len(buf[: m.start()].strip())
            buf = buf[m.start() :]
            started = True
        if later is not None:
            starts = [m.start() + 1 for m in later.finditer(buf)]
        else:
            starts = [m.start() for m in pat.finditer(buf, 1) if m.start() > 0]
        for s in starts:
            yield buf[pos:s]
            pos = s
        buf = buf[pos:]
    if not started:
        if saw_text or buf.strip():
            raise InputError(f"{path}: no document starts here: data.document_start {document_start!r} matches nowhere")
        return
    if buf.strip():
        yield buf


def clean_document(text: str) -> str:
    """Strip leading blank lines and trailing whitespace; end with exactly one newline."""
    text = text.lstrip("\n").rstrip()
    return text + "\n" if text else ""
