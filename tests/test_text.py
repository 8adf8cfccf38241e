"""Tokenizers, detokenizer and mojibake repair (hpcrnn.text)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcrnn.text.detokenize import detokenize
from hpcrnn.text.formats import ingredient_block
from hpcrnn.text.repair import repair_mojibake
from hpcrnn.text.tokenize import DOC_SEP, EOR, EOS, NL, UNK, tokenize, tokenize_documents_bytes


def _recipes(path, n=None):
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", text)  # as the corpus reader does
    docs = [d.strip("\n") + "\n" for d in re.split(r"(?m)^(?=Title:)", text) if d.strip()]
    return docs[:n] if n else docs


# ---------------------------------------------------------------- the lecture's rules


def test_punctuation_is_spaced_off_words():
    assert tokenize("word!") == ["word", "!"]
    assert tokenize("Stir, then bake.") == ["stir", ",", "then", "bake", "."]
    assert tokenize("(canned)") == ["(", "canned", ")"]


def test_newlines_are_tokens_of_their_own():
    assert tokenize("word\n") == ["word", NL]
    assert tokenize("a\n\nb") == ["a", NL, NL, "b"]


def test_runs_of_dashes_stay_one_word_single_dashes_are_spaced():
    assert tokenize("cooked -- do not") == ["cooked", "--", "do", "not"]
    assert tokenize("-----") == ["-----"]
    assert tokenize("pineapple-coconut") == ["pineapple", "-", "coconut"]
    assert tokenize("MMMMM-----FILLING-----") == ["mmmmm", "-----", "filling", "-----"]


def test_lower_case_and_all_spaces_removed():
    assert tokenize("  Salt \t and   PEPPER ") == ["salt", "and", "pepper"]


def test_fractions_and_degrees():
    assert tokenize("1/2 c 350°F") == ["1", "/", "2", "c", "350", "°", "f"]


def test_whitespace_tokenizer_closes_every_line_with_eos():
    assert tokenize("the cat sat\na dog\n", "whitespace") == ["the", "cat", "sat", EOS, "a", "dog", EOS]
    assert tokenize("a\n\nb", "whitespace") == ["a", EOS, EOS, "b", EOS]
    assert tokenize("<unk> N rose", "whitespace") == [UNK, "N", "rose", EOS]


def test_char_tokenizer_keeps_every_character():
    assert tokenize("Ab c\n", "char") == ["A", "b", " ", "c", "\n"]


def test_unknown_tokenizer_is_an_error():
    with pytest.raises(ValueError):
        tokenize("x", "bpe")


# ---------------------------------------------------------------- fast path == tokenize

_ALPHABET = st.sampled_from(
    list("abcXYZ019 \t\n.,;:-_*=~!?'\"()/&%$#@+<>") + ["é", "ñ", "½", "°", "─", "═", "ß", "Ω", "ﬁ", "\xa0"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_ALPHABET, max_size=40).map("".join), min_size=1, max_size=4))
def test_corpus_fast_path_yields_the_same_tokens(texts):
    want = []
    for t in texts:
        want += [w.encode() for w in tokenize(t)] + [DOC_SEP]
    assert tokenize_documents_bytes(texts) == want


def test_corpus_fast_path_on_real_recipes(shared_5k):
    docs = _recipes(shared_5k)
    want = []
    for t in docs:
        want += [w.encode() for w in tokenize(t)] + [DOC_SEP]
    assert tokenize_documents_bytes(docs) == want


# ---------------------------------------------------------------- detokenizer


@pytest.mark.parametrize(
    "text",
    [
        "word!",
        "stir, then bake at 350°f for 1 1/2 hours.",
        "don't use the 9-inch pan (or a 1/4\" dish).",
        "cooked -- do not boil.",
        "price: $1.80, 1,000 servings; 0:45 minutes",
        'he said "stir well" and left.',
        "mmmmm-----filling-----",
        "write to someone@aol.com",
    ],
)
def test_detokenize_reattaches_punctuation(text):
    assert detokenize(tokenize(text), capitalize=False) == text


def test_detokenize_restores_lines_documents_and_capitals():
    toks = (
        tokenize(
            "Title: FRIED RICE\nCategories: rice, chinese\nYield: 4 servings\n1 c  Rice\n"
            "2 tb Soy sauce\n\nBoil the rice. stir in soy.\n"
        )
        + [EOR]
        + tokenize("title: x\n")
        + [EOR]
    )
    out = detokenize(toks)
    assert out.startswith(
        "Title: Fried Rice\nCategories: Rice, Chinese\nYield: 4 servings\n1 c Rice\n"
        "2 tb Soy sauce\n\nBoil the rice. Stir in soy.\n"
    )
    assert out.endswith("\n\nTitle: X\n")  # documents separated by a blank line


def test_detokenize_keeps_unknown_words_visible():
    assert detokenize(["title", ":", UNK, "soup", NL]) == "Title: <unk> Soup\n"
    assert detokenize(["a", "b", EOS, "c", EOS], "whitespace") == "a b\nc\n"
    assert detokenize(list("ab\n") + [EOR] + list("c"), "char") == "ab\n\nc"


def test_detokenize_round_trips_real_recipes(shared_5k):
    """Generated token streams must read as recipes again: on real recipes, detokenize(tokenize(x)) gives
    back the same tokens always, and the same lines (up to case and runs of spaces) almost always."""
    docs = _recipes(shared_5k, 800)
    norm = lambda s: [re.sub(r"\s+", " ", line).strip().lower() for line in s.split("\n")]  # noqa: E731
    same = total = 0
    for d in docs:
        toks = tokenize(d)
        back = detokenize(toks)
        assert tokenize(back) == toks, d[:200]
        a, b = norm(d), norm(back)
        assert len(a) == len(b)
        same += sum(x == y for x, y in zip(a, b))
        total += len(a)
    assert same / total > 0.93, same / total


def test_ingredient_block_of_a_recipe():
    lines = [
        "Title: Soup",
        "Categories: Soups",
        "Yield: 4 servings",
        "1 c  Water",
        "Salt",
        "MMMMM-----GARNISH-----",
        "2 tb Parsley",
        "Combine salad ingredients.",
        "Serve.",
    ]
    assert ingredient_block(lines) == (3, 7)
    assert ingredient_block(
        ["Title: x", "Yield: 1", "", "1 c Flour", "", "A long instruction line that is clearly not an ingredient line."]
    ) == (3, 4)
    assert ingredient_block(["Just prose."]) == (0, 0)


# ---------------------------------------------------------------- mojibake


@pytest.mark.parametrize(
    "bad, good",
    [
        ("Bake at 350øF for 1 hour.", "Bake at 350°F for 1 hour."),
        ("Heat oven to 200ø C.", "Heat oven to 200° C."),
        ("Add 1« cups flour and « tsp salt.", "Add 1½ cups flour and ½ tsp salt."),
        ("Cut into ¬-inch dice.", "Cut into ¼-inch dice."),
        ("ÄÄÄÄÄÄÄÄ Submitted by Jo", "──────── Submitted by Jo"),
        ("ÉÍÍÍÍ»\nº Hi º", "╔════╗\n║ Hi ║"),
        ("2 jalape¤o peppers", "2 jalapeño peppers"),
        ("saut\x82 the onions", "sauté the onions"),
        ("Don\x92t stir", "Don’t stir"),
    ],
)
def test_repair_mojibake_where_the_evidence_is_clear(bad, good):
    out, n = repair_mojibake(bad)
    assert out == good
    assert n == sum(a != b for a, b in zip(bad, good)) > 0


@pytest.mark.parametrize(
    "text",
    [
        "Sauce Béarnaise with crème fraîche",  # real accents: cp437 would make Greek letters of them
        "Bake at 350°F until golden.",  # a real degree sign
        "Add 1½ cups of Cool Whip®.",
        "plain ascii 350 F",
        "Crème brûlée ☃",  # not latin-1 at all
        "Price 1.80á",  # no evidence
    ],
)
def test_repair_mojibake_leaves_good_text_alone(text):
    assert repair_mojibake(text) == (text, 0)


def test_repair_of_a_mixed_document_touches_only_the_evidence():
    out, n = repair_mojibake("Sauce Béarnaise: bake at 350øF")
    assert out == "Sauce Béarnaise: bake at 350°F" and n == 1


def test_repair_on_the_real_corpus(shared_5k):
    docs = _recipes(shared_5k)
    repaired = 0
    for d in docs:
        out, n = repair_mojibake(d)
        repaired += n > 0
        assert not re.search(r"\dø", out)
        if "sauté" in d or "Béarnaise" in d:
            assert "Θ" not in out  # no accented word turned into a Greek letter
    assert repaired > 50  # ~3% of the recipes carry cp437 damage
