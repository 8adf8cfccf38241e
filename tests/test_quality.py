"""Quality figures: exact novelty against a brute force, parsing, ingredient words, coherence, repetition."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcrnn.generate import quality as Q


def brute_longest_copy(stream, seq) -> int:
    s, t = list(stream), list(seq)
    best = 0
    for i in range(len(t)):
        for j in range(i + 1, len(t) + 1):
            sub = t[i:j]
            if any(s[k : k + len(sub)] == sub for k in range(len(s) - len(sub) + 1)):
                best = max(best, len(sub))
            else:
                break
    return best


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_longest_copy_matches_brute_force(data):
    vocab = data.draw(st.sampled_from([2, 3, 5, 300, 70000]))  # 70000: 17-bit keys, K = 6
    stream = data.draw(st.lists(st.integers(0, vocab - 1), min_size=0, max_size=120))
    seq = data.draw(st.lists(st.integers(0, vocab - 1), min_size=0, max_size=40))
    if stream and data.draw(st.booleans()):  # plant a long verbatim copy
        a = data.draw(st.integers(0, len(stream) - 1))
        seq = seq[:5] + stream[a : a + 30] + seq[5:]
    idx = Q.CopyIndex(np.array(stream, dtype=np.int64), vocab)
    assert idx.longest_copy(seq) == brute_longest_copy(stream, seq)


def brute_longest_copy_np(stream, seq) -> int:
    """The same answer by exhaustive comparison with numpy (for streams too long for pure Python)."""
    stream, seq = np.asarray(stream), np.asarray(seq)
    best = 0
    for i in range(len(seq)):
        L = best + 1
        while i + L <= len(seq) and L <= len(stream):
            win = np.lib.stride_tricks.sliding_window_view(stream, L)
            if not (win == seq[i : i + L]).all(axis=1).any():
                break
            best = L
            L += 1
    return best


def test_longest_copy_long_runs_and_many_candidates():
    rng = np.random.default_rng(0)
    # a repetitive stream (its K-grams occur hundreds of times) and copies far longer than the key depth
    unit = rng.integers(0, 6, 40)
    stream = np.concatenate([np.tile(unit, 100), rng.integers(0, 6, 3000)])
    idx = Q.CopyIndex(stream, 6)
    assert idx.K == 2 * (64 // 3)  # 3 bits a token (6 ids and the separator): 21 tokens per 64-bit key
    for a, n in ((1000, 150), (4100, 120), (6000, 60)):
        seq = np.concatenate([rng.integers(0, 6, 7), stream[a : a + n], rng.integers(0, 6, 9)])
        got = idx.longest_copy(seq)
        assert got >= n
        assert got == brute_longest_copy_np(stream, seq)
    # the separator (the vocabulary size) never matches: a copy cannot run across it
    two = np.array([1, 2, 3, 6, 4, 5])
    assert Q.CopyIndex(two, 6).longest_copy([2, 3, 4, 5]) == 2
    assert Q.CopyIndex(two, 6).longest_copy([1, 2, 3]) == 3


def test_longest_copy_empty_inputs():
    assert Q.CopyIndex(np.zeros(0, dtype=np.int64), 10).longest_copy([1, 2]) == 0
    assert Q.CopyIndex(np.array([1, 2, 3]), 10).longest_copy([]) == 0


def test_repeated_4grams():
    assert Q.repeated_ngram_share([1, 2, 3]) == 0.0
    assert Q.repeated_ngram_share([1, 2, 3, 4, 5, 6]) == 0.0
    loop = [1, 2, 3, 4] * 10  # the greedy loop: 37 4-grams, 4 distinct
    assert Q.repeated_ngram_share(loop) == pytest.approx(1 - 4 / 37)


MEALMASTER = """Title: Garlic Bread
Categories: Breads
Yield: 4 servings
1 lg French bread loaf
1/2 c  Butter, softened
4    Cloves garlic; minced
2 tb Chopped parsley
Salt
Mix the butter, garlic and parsley. Spread on the bread and bake at
350F for 10 minutes. Serve with tomato soup.

Source: a cookbook
"""


def test_parse_mealmaster_recipe():
    p = Q.parse_recipe(MEALMASTER)
    assert p.title == "Garlic Bread"
    assert p.ingredient_lines == [
        "1 lg French bread loaf",
        "1/2 c  Butter, softened",
        "4    Cloves garlic; minced",
        "2 tb Chopped parsley",
        "Salt",
    ]
    assert p.instructions.startswith("Mix the butter")
    assert p.has_title and p.has_ingredients and p.has_instructions


def test_parse_headerless_and_broken_recipes():
    p = Q.parse_recipe("Apple Pie\n\nPeel the apples and bake them in the crust for an hour.\n")
    assert p.title == "Apple Pie" and not p.has_ingredients and p.has_instructions
    p = Q.parse_recipe("Title: Soup\nCategories: Soups\nYield: 2 servings\n")
    assert p.has_title and not p.has_ingredients and not p.has_instructions
    p = Q.parse_recipe("Title:\nCategories: x\n")
    assert not p.has_title


def test_ingredient_names_and_words():
    assert Q.ingredient_name("1/2 c  Chopped parsley, fresh").strip() == "Chopped parsley"
    assert Q.ingredient_name("4    Cloves garlic; minced").strip() == "garlic"  # a spelled-out unit
    assert Q.ingredient_name("1 cn Onion -- chopped in blender").strip() == "Onion"
    assert Q.ingredient_name("-Beaten") == "Beaten"
    assert Q.name_words("1/2 c  Chopped parsley, fresh") == {"parsley"}
    assert Q.normalize_word("Tomatoes") == Q.normalize_word("tomato") == "tomato"
    assert Q.normalize_word("cherries") == "cherry"


def _recipe(title, ingredients, instructions):
    return Q.parse_recipe(
        f"Title: {title}\nCategories: Test\nYield: 2 servings\n" + "\n".join(ingredients) + "\n" + instructions + "\n"
    )


def test_ingredient_words_and_coherence():
    corpus = []
    for k in range(6):
        corpus.append(
            _recipe(
                f"r{k}",
                ["2 c  Flour", "1 ts Salt", "3    Onions, chopped", "1 tb Garlic"],
                "Heat the oven. Mix the flour, salt, onion and garlic well, then bake.",
            )
        )
    corpus.append(_recipe("hot", ["1 c  Heat"], "Heat the pan and heat the oven and heat it all through."))
    words = Q.build_ingredient_words(corpus, min_recipes=3)
    assert {"flour", "salt", "onion", "garlic"} <= words
    assert "chopped" not in words  # a preparation word, not an ingredient
    assert "heat" not in words  # too rare in ingredient names, and mostly an instruction word
    good = _recipe("g", ["2 c  Flour", "1 ts Salt"], "Mix the flour and salt into a dough and knead it.")
    assert Q.coherence(good, words) == (1.0, 2)
    bad = _recipe("b", ["2 c  Flour"], "Fry the onions and garlic, add the flour and the salt and stir.")
    assert Q.coherence(bad, words) == (0.25, 4)
    none = _recipe("n", ["2 c  Flour"], "Stir it well until it is smooth and serve it hot.")
    assert Q.coherence(none, words) == (None, 0)


def test_recipe_quality_and_summary():
    words = frozenset({"butter", "garlic", "parsley", "bread", "tomato"})
    idx = Q.CopyIndex(np.arange(100), 200)
    q = Q.recipe_quality(MEALMASTER, list(range(10, 30)) + [150, 151], words, idx)
    assert q["structure"] and q["ingredient_lines"] == 5
    assert q["coherence"] == pytest.approx(0.8)  # tomato is named but not listed
    assert q["longest_copy"] == 20 and q["repeated_4grams"] == 0.0
    q2 = Q.recipe_quality("just words\n", [1, 1, 1, 1, 1], words, None)
    s = Q.summarize([q, q2], [22, 5])
    assert s["recipes"] == 2 and s["structure"] == 0.5 and s["coherence_mean"] == pytest.approx(0.8)
    assert s["coherence_recipes"] == 1 and s["longest_copy_max"] == 20 and s["tokens_mean"] == 13.5
    assert Q.summarize([]) == {"recipes": 0}


def test_real_recipes_score_coherent_and_shuffled_ones_do_not(shared_5k):
    """On the shared corpus the measure separates real recipes from recipes whose instructions belong to
    another recipe (the lecture's failure, made on purpose)."""
    text = shared_5k.read_text(encoding="utf-8")
    recs = [r for r in re.split(r"\n(?=Title:)", text) if r.strip()][:1500]
    parsed = [Q.parse_recipe(r) for r in recs]
    words = Q.build_ingredient_words(parsed[:1200])
    held = parsed[1200:]
    assert sum(p.has_title and p.has_ingredients and p.has_instructions for p in held) / len(held) > 0.9
    real = [c for c in (Q.coherence(p, words)[0] for p in held) if c is not None]
    swapped = [
        Q.ParsedRecipe(p.title, p.ingredient_lines, held[(k + 7) % len(held)].instructions) for k, p in enumerate(held)
    ]
    fake = [c for c in (Q.coherence(p, words)[0] for p in swapped) if c is not None]
    assert np.mean(real) > 0.65
    assert np.mean(fake) < np.mean(real) - 0.3
