"""``python -m hpcrnn.evaluate RUN --complete FILE``: write the rest of real recipes from their ingredients.

Each recipe of FILE (the corpus layout, split like a prompts file: a recipe starts at each ``Title:``
line) is cut after its ingredient block (:func:`hpcrnn.generate.prompts.cut_after_ingredients`). Then:

* **perplexity of the real instructions given the real ingredient block**: the model reads each whole
  recipe from its start (the end-of-recipe token first, the usual state and pointer, one forward pass),
  and only the tokens after the cut are scored (the closing end-of-recipe token included: knowing where
  the recipe ends is part of writing it);
* **generation of the rest** with the config's sampling (``generate.temperature``, ``top_k``, ``top_p``,
  ``max_tokens``, ``seed``) and ``generate.precision`` resolved as the job resolves it on this CPU (bf16
  products where it has bf16 kernels: the figures are those of the recipes the job would write), recipe
  ``i`` primed by the cut of recipe ``i`` exactly as a ``generate.prompts`` job with
  ``generate.prompts_cut: ingredients`` would prime it;
* the figures of the generated recipes and of the real ones side by side (:mod:`hpcrnn.generate.quality`):
  ``listed_used``, ``extra_items``, ``structure``, ``coherence`` and the **ending** (the share of
  generated recipes that ended with the end-of-recipe token before ``generate.max_tokens``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path

import torch

from hpcrnn.config import Config
from hpcrnn.data.corpus import open_corpus
from hpcrnn.data.sequences import PAD
from hpcrnn.errors import InputError
from hpcrnn.evaluate import command
from hpcrnn.evaluate.metrics import Sums
from hpcrnn.generate import quality as Q
from hpcrnn.generate.corpus_view import CorpusView
from hpcrnn.generate.describe import Describer, build_quality_context, real_prompted_quality
from hpcrnn.generate.job import decode_recipes
from hpcrnn.generate.prompts import PromptSet, plan_prompts
from hpcrnn.model.precision import resolve_precision
from hpcrnn.model.restore import open_checked
from hpcrnn.text.tokenize import tokenize

SCORE_BATCH = 16  # recipes per forward pass when scoring the real instructions


def _ids(cv: CorpusView, text: str) -> list[int]:
    return cv.ids(tokenize(text, cv.tokenizer))


@torch.no_grad()
def instructions_figures(model, cv: CorpusView, pp: PromptSet) -> dict:
    """Loss, perplexity, accuracy of each real recipe's tokens after its cut, read from the recipe's start."""
    rows, cuts = [], []
    for e, plan in zip(pp.entries, pp.plans):
        whole = [cv.boundary_id] + _ids(cv, e.real)
        cut = len(plan.fixed)  # the boundary and the prompt's tokens
        if whole[:cut] != plan.fixed:  # a cut at a line end tokenizes as the whole recipe's beginning
            raise InputError(f"{pp.source}: recipe {e.number}: its cut does not read as its beginning")
        if cv.eor_id is not None:
            whole.append(cv.eor_id)  # the end of the recipe, as the training stream has it
        rows.append(whole)
        cuts.append(cut)
    model.eval()
    sums = Sums(cv.unk_id)
    for a in range(0, len(rows), SCORE_BATCH):
        part, at = rows[a : a + SCORE_BATCH], cuts[a : a + SCORE_BATCH]
        width = max(map(len, part))
        x = torch.full((len(part), width), PAD, dtype=torch.long)
        for r, row in enumerate(part):
            x[r, : len(row)] = torch.tensor(row)
        y = x[:, 1:].clone()
        for r, c in enumerate(at):
            y[r, : c - 1] = PAD  # the prompt's own tokens are given, not scored
        logits, _ = model(x[:, :-1].clamp_min(0), None)
        sums.add(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return sums.result(lambda t: t)


def run_complete(cfg: Config, checkpoint: str | None, path: str | Path, score: bool = True) -> dict:
    """The figures of ``--complete FILE`` (see the module docstring); ``score=False`` leaves out the
    perplexity of the real instructions (it does not depend on the sampling settings)."""
    info, model, _ = open_checked(cfg, open_corpus(cfg.h5_path), checkpoint)
    g = dataclasses.replace(cfg.generate, prompt="", prompts=str(path), prompts_cut="ingredients", num_recipes=1)
    gcfg = dataclasses.replace(cfg, generate=g)
    cv = CorpusView.open(cfg.h5_path)
    pp = plan_prompts(gcfg, cv)
    scored = instructions_figures(model, cv, pp) if score else None
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the figures alone (JSON with --json)
        qc = build_quality_context(cv, cfg.data.seed)
    describe = Describer(cv, qc, 0)  # in this process: a few recipes
    gen, lengths, stopped = [], [], 0
    todo = list(range(1, len(pp.entries) + 1))
    cpu = torch.device("cpu")
    precision = resolve_precision(g.precision, cpu, "generate", cfg.source, say=lambda m: print(m, file=sys.stderr))
    for i, shown, toks, ended in decode_recipes(gcfg, cv, model, pp, todo, cpu, precision):
        gen.append((i, describe.submit(shown, toks, pp.entry(i).listed)()[2]))
        lengths.append(len(toks))
        stopped += int(ended)
    generated = Q.summarize([q for _, q in sorted(gen, key=lambda x: x[0])], lengths)
    generated["stopped_at_end_of_recipe"] = round(stopped / len(todo), 4)
    real = Q.summarize(real_prompted_quality(cv, qc, [(e.real, e.listed) for e in pp.entries]))
    return {
        "run": cfg.run.name,
        "checkpoint": str(info.path),
        "step": info.step,
        "file": str(Path(path).absolute()),
        "recipes": len(pp.entries),
        "precision": precision,
        "sampling": {
            k: getattr(g, k)
            for k in ("temperature", "top_k", "top_p", "max_tokens", "seed", "listed_bias", "unlisted_bias")
        },
        "real_instructions": {"given": "the real ingredient block", **scored} if scored else None,
        "generated": generated,
        "real": real,
    }


_ROWS = (
    ("listed-used", "listed_used_mean"),
    ("extra items", "extra_items_mean"),
    ("structure", "structure"),
    ("coherence", "coherence_mean"),
    ("ending", "stopped_at_end_of_recipe"),
)


def format_complete(res: dict) -> str:
    def cell(v) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    r = res["real_instructions"]
    lines = [
        f"{res['run']}: checkpoint {res['checkpoint']} (step {res['step']}): {res['recipes']} recipes of "
        f"{res['file']}, each cut after its ingredient block; {res['precision']} products",
        f"real instructions given the real ingredients: ppl {r['ppl']:.2f}, acc {r['acc']:.2%} "
        f"({r['tokens']:,} tokens)",
        f"{'figure':<14} {'generated':>10} {'real':>10}",
    ]
    for name, key in _ROWS:
        lines.append(f"{name:<14} {cell(res['generated'].get(key)):>10} {cell(res['real'].get(key)):>10}")
    return "\n".join(lines)


def _cli(cfg: Config, args) -> None:
    res = run_complete(cfg, args.checkpoint, args.complete)
    print(json.dumps(res, indent=2) if args.json else format_complete(res), flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m hpcrnn.evaluate``: the evaluate command, with ``--complete FILE`` served here."""
    return command.main(argv, complete=_cli)
