"""Every recipe-format rule, once: MealMaster and MasterCook banners, table headers, ingredient rows, header
keys, units, and where a recipe's ingredient lines are.

Two readings of the same formats meet here. The corpus reader sees the files as written (``MMMMM-----
Recipe via Meal-Master``, ``Amount<TAB>Measure<TAB>Ingredient``); the detokenizer and the quality figures
see a document rebuilt from lower-cased tokens, where the tokenizer spaced the punctuation
(``mmmmm----- recipe via meal - master``). Each rule below says which reading it is for.

"The lecture's allrecipes.txt" is the MasterCook export that the course example this project grew from (a
Keras script: one-hot 50-word windows, LSTM(256)) trains on: a title line, a blank line, then a
tab-separated ``Amount Measure Ingredient`` table.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------- MealMaster and MasterCook openings

# A MealMaster recipe opens with "MMMMM----- Recipe via Meal-Master (tm) v8.02" (ten dashes in old files).
# Raw file text, multi-line mode: the reader's document start.
MM_START = r"^(?:MMMMM|-----)-*[ \t]*Recipe via Meal-Master"
# The banner the reader writes for every MealMaster recipe, and the detokenizer sets again.
MM_BANNER = "MMMMM----- Recipe via Meal-Master (tm)"
# The banner as the detokenizer reads it back (lower case, the hyphen spaced).
MM_BANNER_RE = re.compile(r"\s*(?:mmmmm|-----)-*\s*recipe via meal\s*-\s*master", re.I)

# The MasterCook text export opens with this line.
MC_BANNER = "* Exported from MasterCook *"
MC_BANNER_RE = re.compile(r"\s*\*\s*exported from mastercook\s*\*", re.I)
# The ingredient table header with one tab between columns: the lecture's allrecipes.txt, and any
# MasterCook table once the reader has rewritten it.
TABLE_HEAD_TAB_RE = re.compile(r"amount\tmeasure\tingredient", re.I)
# The header in any spacing (the text export's fixed columns), one line.
TABLE_HEAD_RE = re.compile(r"\s*amount\s+measure\s+ingredient", re.I)
# A MasterCook document start in raw file text (multi-line mode): the export banner, or the lecture's
# layout: a title line, a blank line and the tab-separated table header.
MC_START = r"^(?:\*[ \t]*Exported from MasterCook|(?=[^\n\t]*\S[^\n\t]*\n[ \t]*\nAmount\tMeasure\tIngredient))"
# A rule line of dashes and spaces (under a table header).
RULE_LINE_RE = re.compile(r"[-\s]*-[-\s]*\Z")

# How much of a file's start is read to tell its format.
_SNIFF = 1 << 16


def detect_format(head: str) -> str:
    """``mealmaster``, ``mastercook`` or ``plain`` from the first text of a file: the file must *open* with a
    recipe of that format (its first non-blank line), since a recipe corpus may quote a stray
    ``Recipe via Meal-Master`` line somewhere."""
    head = head[:_SNIFF].lstrip("\n \t")
    if re.match(MM_START, head, re.I):
        return "mealmaster"
    if re.match(MC_START, head, re.I):
        return "mastercook"
    return "plain"


def layout_of(lines: list[str]) -> str:
    """The file layout a detokenized (lower-cased) document came from: ``mealmaster``, ``mastercook-export``
    (the ``* Exported from MasterCook *`` text export), ``mastercook`` (the lecture's tab table) or
    ``plain``."""
    first = next((x for x in lines if x.strip()), "")
    if MM_BANNER_RE.match(first):
        return "mealmaster"
    if MC_BANNER_RE.match(first):
        return "mastercook-export"
    if any(TABLE_HEAD_TAB_RE.match(x) for x in lines[:40]):
        return "mastercook"
    return "plain"


# ---------------------------------------------------------------- header keys

HEADER_KEYS = ("title", "categories", "yield", "servings")
_KEYS = "|".join(HEADER_KEYS)
# A header line, stripped: key, separator, value (any case).
HEADER_RE = re.compile(rf"({_KEYS})(\s*:\s*)(.*)\Z", re.I)
# A header line as a MealMaster file writes it (indented, key right-aligned): key, value.
MM_HEADER_RE = re.compile(rf"\s*({_KEYS})\s*:\s*(.*)\Z", re.I)
# The start of a header line, in a line or in multi-line text.
HEADER_START_RE = re.compile(rf"^\s*({_KEYS})\s*:", re.I)
TITLE_RE = re.compile(r"^\s*title\s*:\s*(.*)$", re.I)

# ---------------------------------------------------------------- units

# MealMaster/MasterCook measure abbreviations: on an ingredient line, the word after amount and one of
# these is the ingredient name.
UNIT_ABBREVIATIONS = frozenset(
    """x ea t ts tsp tb tbs tbsp c cup cups pt qt ga gal oz fl lb lbs g kg mg ml l dl cl pk pkg cn can sm md lg
ds pn dr sl bn ct cb""".split()
)
# Every unit word of an ingredient line: the abbreviations and the spelled-out units and containers.
# The detokenizer capitalises after the abbreviations only: "2 large eggs" has the ingredient "Large eggs".
UNITS = UNIT_ABBREVIATIONS | frozenset(
    """cans pinch dash pound pounds ounce ounces teaspoon teaspoons tablespoon tablespoons quart quarts pint
pints gallon gallons liter liters litre litres gram grams package packages packet packets envelope envelopes
jar jars bottle bottles box boxes bunch bunches stick sticks slice slices piece pieces clove cloves head heads
sprig sprigs stalk stalks whole each inch inches large medium small container containers carton cartons bag
bags""".split()
)
# Abbreviations written with a full stop ("1 tsp. salt").
_DOTTED_UNITS = ("ts.", "tb.", "c.", "tsp.", "tbsp.")
# Amount and abbreviated unit at the start of a detokenized ingredient line; ends where the name begins.
AMOUNT_UNIT_RE = re.compile(
    r"^([\d/ .½¼¾-]*\s*)((?:"
    + "|".join(sorted((re.escape(u) for u in (*UNIT_ABBREVIATIONS, *_DOTTED_UNITS)), key=len, reverse=True))
    + r")\s+)?(?=[^\W\d_])",
    re.I,
)

# ---------------------------------------------------------------- ingredient rows

# A MealMaster ingredient row in its fixed columns: amount in 7, a space, unit in 2, a space, ingredient.
_MM_COLUMNS = r"(?P<amt>[ \d/.-]{7}) (?P<unit>[A-Za-z ]{2}) (?P<ing>\S.*)"
MM_INGREDIENT_RE = re.compile(_MM_COLUMNS + r"\Z")
# Where a two-column MealMaster layout starts its right-hand column.
MM_SECOND_COLUMN = 41
# An ingredient row of a MealMaster document: fixed columns, or the reader's tab-separated rewrite.
_MM_ROW = re.compile(r"(?:" + _MM_COLUMNS + r"|[^\t\n]*\t[^\n]*)\Z")
# A section heading inside an ingredient list ("MMMMM-----FILLING-----"), one stripped line.
SECTION_RE = re.compile(r"(?:mmmmm)?\s*-{3,}.*[^\W\d_].*-{3,}\Z", re.I)

# ---------------------------------------------------------------- the ingredient block

_HEAD_BLOCK = re.compile(rf"(?:[ \t]*(?:{_KEYS})[ \t]*:[^\n]*\n)+", re.I)
_BLANKS = re.compile(r"(?:[ \t]*\n)*")
# Lines of stripped length 1..40 (a MealMaster ingredient column), or section headings.
_SHORT_LINES = re.compile(
    r"(?:[ \t]*\S(?:[^\n]{0,38}\S)?[ \t]*\n|[ \t]*(?:mmmmm)?[ \t]*-{3,}[^\n]*?[^\W\d_][^\n]*?-{3,}[ \t]*\n)*", re.I
)
# A short sentence of three or more words ending in a full stop: the directions have begun.
_SENTENCE_LINE = re.compile(r"^[ \t]*[^\d\s][^\n]*?\S[ \t]+\S[^\n]*?[ \t]\S[^\n]*\.[ \t]*$", re.M)


def ingredient_block(lines) -> tuple[int, int]:
    """The ingredient lines of a recipe, as a half-open range of line indices; ``(0, 0)``: none.

    After the header lines (``Title:``, ``Categories:``, ``Yield:``/``Servings:``) come short ingredient
    lines (``1/2 c  Chopped parsley``, ``Salt``, a ``Dressing:`` sub-heading); the block ends at the first
    blank line, the first line longer than a MealMaster ingredient column (40 characters) or the first
    short sentence of three or more words ending in a full stop (``Combine salad ingredients.``).
    ``lines`` is a whole document or a list of its lines.

    MealMaster files (a ``MMMMM----- Recipe via Meal-Master`` banner first): the ingredient rows are the
    lines in its columns or, in the reader's rewritten form, with tabs; MasterCook files: the rows under
    the ``Amount Measure Ingredient`` table header and its rule, up to the first blank line.

    Regexes over the whole text rather than a loop over lines: the corpus builder calls this per recipe.
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


def _structured_block(lines: list[str]) -> tuple[int, int]:
    """The ingredient rows of a MealMaster or MasterCook document without a leading header block."""
    first = next((x for x in lines if x.strip()), "")
    if MM_BANNER_RE.match(first):
        rows = [i for i, x in enumerate(lines) if x.strip() and not HEADER_RE.match(x.strip()) and _MM_ROW.match(x)]
        return (rows[0], rows[-1] + 1) if rows else (0, 0)
    head = next((i for i, x in enumerate(lines[:60]) if TABLE_HEAD_RE.match(x)), None)
    if head is None:
        return 0, 0
    i = head + 1
    while i < len(lines) and lines[i].strip() and RULE_LINE_RE.match(lines[i]):
        i += 1
    j = i
    while j < len(lines) and lines[j].strip():
        j += 1
    return (i, j) if j > i else (0, 0)
