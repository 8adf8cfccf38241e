"""Mojibake repair: undo cp437 bytes once decoded as latin-1, per document, where the evidence is clear.

The shared recipe corpus carries DOS damage of this kind (``350øF`` -> ``350°F``, ``«`` -> ``½``, ``ÄÄÄÄ``
-> ``────``). General-purpose fixers look for UTF-8 read as cp1252/latin-1, not for cp437 read as latin-1,
so the repair uses Python's own codecs: the candidate reading is ``text.encode("latin-1").decode("cp437")``.
"""

from __future__ import annotations

import re
import unicodedata

# The cp437 reading of each latin-1 character (0x80-0xFF), for counter-evidence checks.
_CP437 = {chr(b): bytes([b]).decode("cp437") for b in range(0x80, 0x100)}


def _is_latin_letter(c: str) -> bool:
    try:
        return c.isalpha() and unicodedata.name(c).startswith("LATIN")
    except ValueError:
        return False


# What may follow a fraction in a recipe: a digit, a unit or its prefix ("teasp", "tables"), inches, time.
# Evidence context only (prefixes, word ends), not the unit list of hpcrnn.text.formats.
_AFTER_FRACTION = (
    r"(?:\d|c\b|cups?|ts\b|tsp|tb\b|tbsp|teasp|tables|t\b|lbs?\b|oz\b|pounds?|inch|in\b|\"|hours?|"
    r"min|qt\b|pt\b|gal|x\b|ea\b)"
)
# Evidence that a document is cp437 read as latin-1; each match spans the characters to re-read. Every
# alternative starts with the suspicious character and looks around it afterwards, so the scan skips
# ASCII text at the speed of a character-class test (a leading lookbehind would be tried everywhere).
_EVIDENCE = re.compile(
    r"ø(?:(?<=\dø)|(?<=\d\sø)|(?=\s?[FC]\b))"  # 350øF: ø is cp437 0xF8, the degree sign
    r"|[«¬](?:(?<=\d[«¬])|(?<![^\s(][«¬])(?=[ -]?" + _AFTER_FRACTION + r"))"  # 1«, « cup: ½ and ¼
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
    r"[°½¼¾](?:(?<=\d[°½¼¾])|(?<=\d\s[°½¼¾]))|[½¼¾](?=[ -]?" + _AFTER_FRACTION + r")"
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


def _has_counter_evidence(lat: str, marked: bytearray) -> bool:
    """Whether the latin-1 reading ``lat`` is right somewhere outside the evidence spans (``marked``):
    latin-1 characters used as they should be, or a Latin letter inside a word that cp437 would break."""
    if _LATIN1_OK.search(lat):
        return True
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
                return True  # Béarnaise: a real accented word
    return False


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
    counter = _has_counter_evidence(lat, marked)
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
