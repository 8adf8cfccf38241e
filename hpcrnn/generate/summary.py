"""``summary.json`` of a generation folder: the generated recipes' figures beside real recipes' figures.

Without prompts the real recipes are a fixed sample of the test split (``generate.quality_sample``). With a
prompts file (``generate.prompts``) the summary also says which prompts, and, when each prompt was cut from
a whole recipe (``generate.prompts_cut: ingredients``), the same figures of those whole recipes
(``real_prompted``): how much of its given ingredient list a real cook's instructions use, and how many
unlisted ingredients they name, next to the model's.
"""

from __future__ import annotations

from hpcrnn.config import Config
from hpcrnn.generate import quality as Q
from hpcrnn.generate.corpus_view import CorpusView
from hpcrnn.generate.describe import QualityContext, real_prompted_quality, real_sample_quality
from hpcrnn.generate.prompts import PromptPlan, PromptSet
from hpcrnn.run.checkpoints import CheckpointInfo
from hpcrnn.run.generated import generation_settings

DEFINITIONS = {
    "structure": "has a title, at least one ingredient line and instructions (>= 5 words)",
    "coherence": "share of the distinct ingredient words named in the instructions that appear in "
    "the recipe's own ingredient lines (ingredient words: names in training ingredient "
    "lines, see hpcrnn/generate/quality.py)",
    "repeated_4grams": "1 - distinct token 4-grams / token 4-grams (generated tokens only)",
    "longest_copy": "longest run of tokens copied verbatim from the training split's token stream "
    "(generated tokens only; whole recipe for real ones)",
}
PROMPTED_DEFINITIONS = {
    "listed_used": "share of the prompt's ingredient lines whose head noun (the last word of the "
    "ingredient's name) the instructions name",
    "extra_items": "distinct ingredient words named in the instructions that appear in no ingredient "
    "line of the prompt",
}


def job_summary(
    cfg: Config,
    info: CheckpointInfo,
    cv: CorpusView,
    qc: QualityContext,
    records: list[dict],
    pp: PromptPlan | PromptSet,
) -> dict:
    """The content of summary.json (deterministic: two tasks that both merge write the same bytes)."""
    g = cfg.generate
    real, real_len = real_sample_quality(cv, qc, g.quality_sample, cfg.data.seed)
    generated = Q.summarize([r["quality"] for r in records], [r["tokens"] for r in records])
    generated["stopped_at_end_of_recipe"] = round(sum(r["stopped"] == "eor" for r in records) / len(records), 4)
    out = {
        "name": g.name,
        "run": cfg.run.name,
        "num_recipes": g.num_recipes,
        "checkpoint": {"step": info.step, "path": str(info.path)},
        "vocab_hash": cv.vocab_hash,
        "settings": generation_settings(cfg),
        "precision": records[0].get("precision"),
        "generated": generated,
        "real_test_sample": Q.summarize(real, real_len),
        "ingredient_words": len(qc.ingredient_words),
        "train_tokens": qc.train_tokens,
        "definitions": dict(DEFINITIONS),
    }
    if isinstance(pp, PromptSet):
        out["prompts"] = {**pp.record(), "cut": g.prompts_cut, "recipes": len(records)}
        whole = [(e.real, e.listed) for e in pp.entries if e.real is not None]
        if whole:
            out["real_prompted"] = Q.summarize(real_prompted_quality(cv, qc, whole))
        out["definitions"].update(PROMPTED_DEFINITIONS)
    return out
