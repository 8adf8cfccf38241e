"""Lexically constrained decoding (hpcrnn/generate/constrain.py: ``generate.listed_bias`` and
``generate.unlisted_bias``): off is today's decoding bitwise; on, recipe i is still a function of (seed, i);
the tracker finds the ingredient lines where parse_recipe does; and on a trained model the instructions use
more of the listed ingredients and fewer others."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from hpcrnn.data.documents import prepared_documents
from hpcrnn.data.sources import ReadStats
from hpcrnn.errors import ConfigError
from hpcrnn.generate import complete as CO
from hpcrnn.generate import constrain as C
from hpcrnn.generate import job as G
from hpcrnn.generate.corpus_view import CorpusView
from hpcrnn.generate.quality import parse_recipe
from hpcrnn.run import generated as F
from hpcrnn.text.detokenize import detokenize
from hpcrnn.text.formats import ingredient_block
from hpcrnn.text.tokenize import EOR, NL, tokenize
from hpcrnn.train.loop import run_train
from tests.helpers import make_recipes
from tests.test_generate import files_of, prepared_run, with_

torch.set_num_threads(1)

BIAS = ("generate.listed_bias=2.0", "generate.unlisted_bias=1.5")
# prompts that open the instructions, so that even a random-weight model writes under the bias
PROMPTS = """Title: BEAN SOUP
Yield: 4 Servings
2 c  Beans
1 ts Salt
Boil the beans -- 30 minutes at 350F.

Title: FIG JAM
Yield: 2 Servings
3 c  Figs
1 c  Sugar
1 c  Milk
Boil the figs and milk -- 30 minutes at 350F.
"""


def _prompts(tmp_path) -> str:
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    return f"generate.prompts={tmp_path / 'prompts.txt'}"


def _settings(listed=1.0, unlisted=1.0, temperature=0.0):
    return types.SimpleNamespace(listed_bias=listed, unlisted_bias=unlisted, temperature=temperature)


# ------------------------------------------------------------------------------------ the tracker


def _lexicon(texts: list[str], words=frozenset({"salt", "sugar"})):
    toks = [tokenize(t) for t in texts]
    vocab = sorted({t for ts in toks for t in ts} | {NL, EOR})
    stoi = {t: i for i, t in enumerate(vocab)}
    return C.lexicon(_settings(), vocab, "recipe", words, "cpu"), [[stoi[t] for t in ts] for ts in toks]


def test_tracker_finds_the_ingredient_lines_of_real_recipes_as_parse_recipe_does(shared_5k):
    """Fed token by token (as the decoder's host reads a slot), the tracker's listed lines are
    parse_recipe's ingredient lines of the recipe's text, and it knows the instructions began at the first
    instruction line: at its end, or in its middle once it is too long for an ingredient line."""
    docs = [t for t, _ in prepared_documents(shared_5k, "^Title:", "plain", True, ReadStats())][:400]
    lex, ids = _lexicon(docs)
    instr = mid = 0
    for d, toks in zip(docs, ids):
        text = detokenize([lex.vocab[i] for i in toks] + [EOR])  # the text a generated recipe's file has
        p = parse_recipe(text)
        start, end = ingredient_block(text.split("\n"))
        doc, at = C.Document(lex), None
        for t in toks:
            doc.feed([t])
            if doc.mode == C.INSTR and at is None:
                at = (len(doc.lines), len(doc.partial))
        if doc.mode == C.INSTR:
            instr += 1
            assert [x.lower() for x in doc.listed] == [x.lower() for x in p.ingredient_lines], d[:200]
            assert at[0] - (at[1] == 0) == end, d[:200]  # the first instruction line, or the line being read
            mid += at[1] > 0
        elif doc.mode == C.BLOCK:  # the recipe ends inside its block: no instructions
            assert not p.instructions.strip() and p.ingredient_lines
        else:
            assert not p.ingredient_lines, d[:200]
    assert instr >= 390 and mid >= 100  # most recipes, many of them known mid-line


def test_bias_row_favours_unnamed_listed_heads_and_disfavours_unlisted_ingredients():
    text = "Title: Soup\nYield: 2 servings\n2 c  Tomatoes, diced\n1 ts Salt\n1 lg Garlic clove\n"
    text += "Cook the salt and the fig.\n"
    lex, (toks,) = _lexicon([text + "tomato garlic cloves sugar fig figs"], words=frozenset({"salt", "sugar", "fig"}))
    doc = C.Document(lex)
    doc.feed(toks[: toks.index(lex.vocab.index("tomato"))])
    assert doc.mode == C.INSTR and doc.listed == ["2 c tomatoes, diced", "1 ts salt", "1 lg garlic clove"]
    row = doc.bias_row()

    def b(w):
        return float(row[lex.vocab.index(w)])

    # the heads (quality.head_noun: tomato, garlic; clove is a unit) not named yet: the bonus for every
    # spelling; salt, already named: none
    assert b("tomatoes") == b("tomato") == b("garlic") == 1.0 and b("salt") == 0.0
    assert b("sugar") == b("fig") == b("figs") == -1.0  # ingredient words no listed line names
    assert b("clove") == b("cloves") == 0.0 and b("cook") == 0.0  # a listed word, not a head; not an ingredient
    # the temperature divides the bias as it divides the log-probabilities
    lex2 = C.lexicon(_settings(2.0, 3.0, temperature=0.5), lex.vocab, "recipe", frozenset({"sugar"}), "cpu")
    assert lex2.listed == 4.0 and lex2.penalty[lex.vocab.index("sugar")] == -6.0


def test_a_document_without_header_or_ingredient_lines_gets_no_bias():
    lex, (a, b) = _lexicon(["Soup of the day\nCook it all.\n", "Title: Soup\nYield: 2\n\nCook the soup for an hour.\n"])
    for toks in (a, b):
        doc = C.Document(lex)
        doc.feed(toks)
        assert doc.mode == C.OFF


# ------------------------------------------------------------------------------------ a closed list


def test_line_starts_count_what_opens_ingredient_lines_and_instructions(shared_5k):
    """Over real recipes, quantities and section headings open ingredient lines and verbs open the
    instructions; each recipe with a block and instructions counts one instruction start."""
    docs = [t for t, _ in prepared_documents(shared_5k, "^Title:", "plain", True, ReadStats())][:400]
    lex, ids = _lexicon(docs)
    counts = C.line_starts(lex.vocab, ids)
    opens = C.ingredient_openers(lex.vocab, counts)
    v = lex.vocab.index
    assert opens[v("1")] and opens[v("2")] and opens[v("mmmmm")]
    assert not opens[v("combine")] and not opens[v("preheat")] and not opens[v("in")]
    with_both = sum(1 for d in docs if (p := parse_recipe(d)).ingredient_lines and p.instructions.strip())
    assert abs(int(counts[1].sum()) - with_both) <= 4, (counts[1].sum(), with_both)
    assert counts[0].sum() > 5 * counts[1].sum()  # every ingredient line counts
    # without the corpus text (a model file): numbers and headings
    rule = C.ingredient_openers(lex.vocab, None)
    assert rule[v("1")] and rule[v("-----")] and rule[v("mmmmm")] and not rule[v("combine")]


def _closing(texts):
    toks = [tokenize(t) for t in texts]
    vocab = sorted({t for ts in toks for t in ts} | {NL, EOR})
    openers = np.array([t[:1].isdigit() for t in vocab])
    lex = C.lexicon(_settings(0.0, 0.0), vocab, "recipe", frozenset(), "cpu", close=True, openers=openers)
    return lex, [[vocab.index(t) for t in ts] for ts in toks]


def test_a_prompt_ending_with_its_ingredient_lines_begins_its_instructions_at_once():
    """A slot whose prompt ends at the end of an ingredient line (and may close) is in its instructions
    before its first token: that token may not open an ingredient line, and its line (nor the recipe) may
    not end before it is longer than an ingredient line. A prompt that ends mid-line, or may not close,
    waits for the block to end as before."""
    head = "Title: Soup\nYield: 2 servings\n2 c  Tomatoes, diced\n1 ts Salt\n"
    rest = "Cook the tomatoes with the salt in a large pot, covered, for one hour.\n1 c  Figs\n"
    lex, (toks,) = _closing([head + rest])
    n = len(tokenize(head))
    prompt, gen = toks[:n], toks[n:]
    assert C.closes(lex, prompt) and not C.closes(lex, prompt[:-1])
    tr = C.Tracker(lex, 3, torch.device("cpu"))
    tr.begin(0, prompt, True)
    tr.begin(1, prompt, False)
    tr.begin(2, prompt[:-1], True)
    assert tr.modes.tolist() == [C.INSTR, C.BLOCK, C.BLOCK] and tr.stage.tolist() == [2, 0, 0]
    assert tr.docs[0].listed == ["2 c tomatoes, diced", "1 ts salt"]
    V, nl, eor, one = len(lex.vocab), lex.nl_id, lex.eor_id, lex.vocab.index("1")

    def masked():
        out = tr.add(torch.zeros(3, V), torch.empty(3, V))
        return {(r, c) for r, c in (out < -1.0).nonzero().tolist()}

    assert masked() == {(0, nl), (0, eor), (0, one), (0, lex.vocab.index("2"))}
    G_ = torch.tensor([gen] * 3)
    chars = 0
    for k, t in enumerate(gen):
        tr.after(G_, torch.full((3,), k + 1), torch.tensor([t] * 3), torch.tensor([True, True, False]))
        chars += C._chars(lex.vocab[t])
        m = masked()
        if chars <= C.FIRST_LONG:  # the first line goes on: it may not end, but may say anything
            assert m == {(0, nl), (0, eor)}, (k, chars)
        else:
            assert m == set() and tr.stage.tolist() == [0, 0, 0]
            break
    assert len(head + rest.split("\n")[0]) - len(head) > 40 and chars > C.FIRST_LONG
    assert tr.modes.tolist()[1] == C.INSTR  # the open slot found its instructions by the line's length
    # a lexicon that does not close (prompt_ingredients: more) never stages a slot
    lex2 = C.lexicon(_settings(1.0, 0.0), lex.vocab, "recipe", frozenset(), "cpu")
    tr2 = C.Tracker(lex2, 1, torch.device("cpu"))
    tr2.begin(0, prompt, True)
    assert lex2.stages is None and tr2.stage.tolist() == [0] and tr2.modes.tolist() == [C.BLOCK]
    assert not C.closes(lex2, prompt)


def test_both_zero_builds_nothing_and_other_tokenizers_are_refused():
    assert C.lexicon(_settings(0.0, 0.0), ["a", NL], "recipe", frozenset(), "cpu") is None
    assert C.lexicon(_settings(0.0, 0.0), ["a"], "char", frozenset(), "cpu") is None
    with pytest.raises(ConfigError, match=r"generate.listed_bias: needs the recipe tokenizer \(data.tokenizer is char"):
        C.lexicon(_settings(1.0, 0.0), ["a", NL], "char", frozenset(), "cpu")


# ------------------------------------------------------------------------------------ the job


def test_settings_at_zero_are_todays_recipes_and_folder(tmp_path):
    cfg_path, cfg = prepared_run(tmp_path)
    for extra in ((), (_prompts(tmp_path),)):
        zero = with_(cfg_path, "generate.name=zero", "generate.listed_bias=0", "generate.unlisted_bias=0.0", *extra)
        today = with_(cfg_path, "generate.name=today", *extra)
        # plan.json and folder names unchanged
        assert F.generation_settings(zero) == F.generation_settings(today)
        assert "listed_bias" not in F.generation_settings(zero)
        G.run_generate(today)
        G.run_generate(zero)
        gen = tmp_path / "scratch" / "tiny" / "generated"
        assert files_of(gen / "today") == files_of(gen / "zero") and len(files_of(gen / "today")) in (7, 14)
        assert (gen / "today" / "index.jsonl").read_bytes() == (gen / "zero" / "index.jsonl").read_bytes()
        for d in ("today", "zero"):
            for p in (gen / d).iterdir():
                p.unlink()
    # non-zero: a setting of its own, recorded, and in a derived folder beside the default one
    cfg = with_(cfg_path, _prompts(tmp_path))
    G.run_generate(cfg)
    on = with_(cfg_path, _prompts(tmp_path), *BIAS)
    assert F.generation_settings(on)["listed_bias"] == 2.0 and F.output_name(on) == "lb2.0-ub1.5"
    out = G.run_generate(on).out_dir
    assert out.name == "lb2.0-ub1.5" and files_of(out) != files_of(gen / "default")
    rec = (out / "index.jsonl").read_text().splitlines()[0]
    assert '"listed_bias": 2.0' in rec and '"unlisted_bias": 1.5' in rec


@pytest.mark.parametrize("pointer", [0, 40], ids=["plain", "pointer"])
# greedy decoding of the random-weight model ends a recipe cut after its ingredients at once
@pytest.mark.parametrize(
    "temperature, cut, ingredients",
    [(0.8, "none", "all"), (0.0, "none", "all"), (0.8, "ingredients", "more"), (0.8, "ingredients", "all")],
)
def test_with_a_bias_same_recipes_across_batch_sizes_and_shards(
    tmp_path, monkeypatch, pointer, temperature, cut, ingredients
):
    """The bias depends on the slot's own tokens only: recipe i is a function of (seed, i). Prompts that
    open the instructions (cut none), or that end with the ingredient lines: the whole list (all: the
    instructions begin at once), or not (more: the host reads the generated lines until it finds them)."""
    cfg_path, cfg = prepared_run(tmp_path, model={"pointer": pointer}, generate={"max_tokens": 60})
    t = (f"generate.temperature={temperature}", _prompts(tmp_path), "generate.num_recipes=4")
    t += (f"generate.prompts_cut={cut}", f"generate.prompt_ingredients={ingredients}")
    switched = []
    publish = C.Tracker._publish
    monkeypatch.setattr(C.Tracker, "_publish", lambda self, r: switched.append(self.docs[r].mode) or publish(self, r))
    G.run_generate(with_(cfg_path, "generate.name=a", "generate.batch_size=3", *t, *BIAS))
    for s in range(3):
        G.run_generate(with_(cfg_path, "generate.name=b", "generate.batch_size=1", *t, *BIAS), shard=s, num_shards=3)
    G.run_generate(with_(cfg_path, "generate.name=c", "generate.batch_size=3", *t))
    gen = tmp_path / "scratch" / "tiny" / "generated"
    a, b = files_of(gen / "a"), files_of(gen / "b")
    assert len(a) == 8 and a == b
    assert (gen / "a" / "index.jsonl").read_bytes() == (gen / "b" / "index.jsonl").read_bytes()
    assert a != files_of(gen / "c")  # and the bias did change recipes
    if cut == "ingredients" and ingredients == "more":  # generated lines took slots into their instructions
        assert switched.count(C.INSTR) > switched.count(C.BLOCK) // 2 > 0
    elif cut == "ingredients":  # every slot began in its instructions
        assert set(switched) == {C.INSTR}


def test_a_prompts_ingredient_list_stays_the_recipes_whole_list(tmp_path):
    """prompt_ingredients: all (the default): every recipe written from a prompt cut after its ingredient
    lines lists exactly those lines, and its instructions begin with a line longer than an ingredient
    line; its own setting in plan.json and the folder name (text prompts only), and with ``more`` and no
    bias the decoder builds nothing (the recipes of before the setting)."""
    cfg_path, cfg = prepared_run(tmp_path, generate={"max_tokens": 80, "temperature": 1.0})
    t = (_prompts(tmp_path), "generate.prompts_cut=ingredients", "generate.num_recipes=6")
    out = G.run_generate(with_(cfg_path, *t)).out_dir
    given = [[" ".join(x.lower().split()) for x in parse_recipe(p).ingredient_lines] for p in PROMPTS.split("\n\n")]
    texts = [p.read_text() for p in sorted(out.glob("recipe-*.txt"))]
    assert len(texts) == 12
    for i, text in enumerate(texts):
        p = parse_recipe(text)
        assert [" ".join(x.lower().split()) for x in p.ingredient_lines] == given[i % 2], text
        assert len(p.instructions.lstrip("\n").split("\n")[0]) > 40, text
    more = with_(cfg_path, *t, "generate.prompt_ingredients=more")
    settings = F.generation_settings(more)
    assert settings["prompt_ingredients"] == "more" and F.output_name(more) != F.output_name(with_(cfg_path, *t))
    assert "prompt_ingredients" not in F.generation_settings(cfg)  # unprompted: folder names unchanged
    assert "prompt_ingredients" in F.generation_settings(with_(cfg_path, "generate.prompt=Bean soup"))
    # beside a folder of before the setting: named only when nothing else differs
    assert F.settings_name({"prompt": ""}, {"prompt": "x", "prompt_ingredients": "all"}).startswith("prompt")
    assert F.settings_name({"prompt": "x"}, {"prompt": "x", "prompt_ingredients": "all"}) == "ingrall"
    assert F.settings_name({"prompt": ""}, {"prompt": "x", "prompt_ingredients": "more"}).endswith("-ingrmore")
    cv = CorpusView.open(cfg.h5_path)

    def lex(c):
        pp = G.plan_prompt(c, cv)
        texts = [p.fixed for p in (pp.plans if isinstance(pp, G.PromptSet) else [pp]) if p.kind == "text"]
        return C.decoding_lexicon(c.generate, cv.vocab, cv.tokenizer, frozenset(), "cpu", texts, lambda: None)

    assert lex(more) is None
    assert lex(with_(cfg_path, *t)).stages is not None
    assert lex(cfg) is None  # unprompted: nothing


def test_on_a_trained_model_listed_used_rises_and_extra_items_fall(tmp_path):
    cfg_path, cfg = prepared_run(
        tmp_path,
        checkpoint=False,
        model={"hidden": 48, "embedding": 32},
        train={"max_steps": 300, "checkpoint_every": 300, "eval_every": 300, "batch_size": 16, "lr": 0.01},
        generate={"max_tokens": 80, "temperature": 1.0},
    )
    run_train(cfg)
    real = tmp_path / "real.txt"
    real.write_text(make_recipes(40, seed=99))
    base = CO.run_complete(cfg, None, real)["generated"]
    on = CO.run_complete(with_(cfg_path, "generate.listed_bias=3", "generate.unlisted_bias=3"), None, real)
    g = on["generated"]
    assert on["sampling"]["listed_bias"] == 3.0
    assert g["listed_used_mean"] > base["listed_used_mean"] + 0.1, (base, g)
    assert g["extra_items_mean"] < base["extra_items_mean"], (base, g)
    assert g["structure"] >= base["structure"] - 0.05


def test_decoder_state_stays_in_step_with_the_batch(tmp_path):
    """The tracker's rows follow the slots through refills and the final shrink."""
    cfg_path, cfg = prepared_run(tmp_path, generate={"max_tokens": 30})
    c = with_(cfg_path, "generate.batch_size=3", "generate.num_recipes=10", *BIAS)
    cv = CorpusView.open(c.h5_path)
    lex = C.lexicon(c.generate, cv.vocab, cv.tokenizer, frozenset({"salt"}), "cpu")
    tr = C.Tracker(lex, 3, torch.device("cpu"))
    for r in range(3):
        tr.begin(r, [cv.boundary_id] + cv.ids(tokenize("Title: x\n1 c salt\nboil the salt and the water now.\n")))
    assert tr.modes.tolist() == [C.INSTR] * 3 and np.all(tr.bias.numpy()[:, cv.stoi["salt"]] == 0)
    tr.keep(torch.tensor([2]), [2])
    assert tr.bias.shape == (1, len(cv.vocab)) and len(tr.docs) == 1 and tr.modes.tolist() == [C.INSTR]


def test_api_and_sample_take_the_settings_like_the_job(tmp_path):
    import hpcrnn
    from hpcrnn.sample import make_sample_parser, settings

    cfg_path, _ = prepared_run(tmp_path)
    given = [p.strip("\n") + "\n" for p in PROMPTS.split("\n\n")]
    (tmp_path / "given.txt").write_text("\n".join(given))
    job = with_(cfg_path, f"generate.prompts={tmp_path / 'given.txt'}", "generate.num_recipes=1", *BIAS)
    out = G.run_generate(job).out_dir
    lm = hpcrnn.load(cfg_path)
    got = lm.generate(n=1, prompt=given, listed_bias=2.0, unlisted_bias=1.5)
    assert got == [(out / f"recipe-0000{i}.txt").read_text() for i in (1, 2)]
    assert lm.generate(n=1, prompt=given) != got
    with pytest.raises(ConfigError, match="listed_bias"):
        lm.generate(n=1, listed_bias=-1.0)
    args = make_sample_parser().parse_args(["run", "--listed-bias", "2", "--unlisted-bias", "0.5"])
    assert settings(args) == {"listed_bias": 2.0, "unlisted_bias": 0.5}
    with pytest.raises(ConfigError, match="--unlisted-bias"):
        settings(make_sample_parser().parse_args(["run", "--unlisted-bias", "-1"]))


def test_a_folder_without_the_biases_names_their_default():
    """A folder written before (or without) a bias: the one-line note shows its value there as the default."""
    from hpcrnn.generate.job import settings_diff

    assert settings_diff({"temperature": 0.8}, {"temperature": 0.8, "listed_bias": 2.0}) == (
        "generate.listed_bias=0.0 (config: 2.0)"
    )
    assert settings_diff({"temperature": 0.8, "unlisted_bias": 1.5}, {"temperature": 0.8}) == (
        "generate.unlisted_bias=1.5 (config: 0.0)"
    )
