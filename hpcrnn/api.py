"""Use a trained model from Python: ``lm = hpcrnn.load(PATH)``, then ``lm.generate(...)``, ``lm.evaluate(text)``.

    import hpcrnn
    lm = hpcrnn.load("scratch/lstm256")              # a run directory, a config file or a model file
    lm = hpcrnn.load("scratch/lstm256", checkpoint="best")  # or "last", a step, a checkpoint folder
    print(lm.generate(n=3, prompt="Chocolate cake", seed=1)[0])
    given = hpcrnn.recipe_prompt("Baba Ganouj", ["6 lg Eggplants", "2 tb Tahini", "1 lg Garlic clove"])
    print(lm.generate(prompt=[given, "Apple pie"])[0])  # one recipe for each prompt

Nothing here decodes or scores by itself: ``generate`` runs the generation job's decoding
(``hpcrnn.generate.job.decode_recipes``) and writes each recipe's text as the job writes its file
(``hpcrnn.generate.describe.recipe_text``), so the same settings and seed give the job's recipes;
``evaluate`` scores text as ``python -m hpcrnn.evaluate --text`` does (``hpcrnn.evaluate.metrics``).
``initial_weights`` is ``train.init_from``: another run's (or a model file's) weights, checked to fit.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from hpcrnn.config import Config, GenerateConfig, _build, prompt_text
from hpcrnn.errors import ConfigError, InputError
from hpcrnn.generate.prompts import recipe_prompt
from hpcrnn.model.file import Vocabulary
from hpcrnn.model.trained import open_trained

__all__ = ["LanguageModel", "load", "initial_weights", "recipe_prompt"]


def _warn_once(msg: str) -> None:
    warnings.warn(f"hpcrnn: {msg}", stacklevel=3)


def _device(device: Any) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"hpcrnn.load: device={device!r}: no GPU is visible")
    return d


class LanguageModel:
    """A trained model with its vocabulary and config (build with :func:`load`).

    ``model``: the torch module (``RecurrentLM``, eval mode); ``vocab``: a :class:`~hpcrnn.model.file.Vocabulary`
    (tokens by id, ``encode``/``decode``); ``config``: the run's :class:`~hpcrnn.config.Config` (its
    ``generate`` section gives ``generate``'s defaults); ``step``: the training step of the weights;
    ``source``: the checkpoint folder or model file they came from."""

    def __init__(self, model, vocab: Vocabulary, config: Config, step: int, source: Path, meta: dict, corpus_path=None):
        self.model = model
        self.vocab = vocab
        self.config = config
        self.step = step
        self.source = Path(source)
        self.meta = meta
        self._corpus_path = corpus_path  # the run's corpus.h5; None for a model file
        self._view = None

    def __repr__(self) -> str:
        m = self.config.model
        return (
            f"LanguageModel({m.cell.upper()} {m.layers}x{m.hidden}, vocab {len(self.vocab):,}, "
            f"step {self.step}, {str(self.source)!r})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _corpus_view(self):
        from hpcrnn.generate.corpus_view import CorpusView  # noqa: PLC0415

        if self._view is None:
            if self._corpus_path is not None:
                self._view = CorpusView.open(self._corpus_path)
            else:
                self._view = CorpusView.of_vocabulary(self.vocab)
        return self._view

    def generate(
        self,
        n: int = 1,
        prompt: str | list[str] | None = None,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        listed_bias: float | None = None,
        unlisted_bias: float | None = None,
        prompt_ingredients: str | None = None,
    ) -> list[str]:
        """``n`` recipes as text, recipe *i* of ``python -m hpcrnn.generate`` with the same settings (those
        not given: the config's ``generate`` section). ``prompt``: as ``generate.prompt`` ("" the start of
        a recipe, one line a title, several lines fed as is, ``file:PATH`` a file's text, ``random`` a
        window of test text). A list of prompts (e.g. of :func:`hpcrnn.recipe_prompt`): ``n`` recipes for
        each, batched together, returned prompt by prompt (``n`` for the first prompt, then the second's);
        the recipe ``j`` (0-based) of prompt ``p`` is recipe ``j * len(prompt) + p + 1`` of the job with a
        ``generate.prompts`` file of the same prompts. ``listed_bias`` / ``unlisted_bias``: as
        ``generate.listed_bias`` / ``generate.unlisted_bias`` (decoding that follows the listed ingredients).
        ``prompt_ingredients``: as ``generate.prompt_ingredients`` ("all": the ingredient lines a prompt ends
        with are the whole list, the default; "more": the model may add some)."""
        from hpcrnn.generate.describe import recipe_text  # noqa: PLC0415
        from hpcrnn.generate.job import decode_recipes  # noqa: PLC0415
        from hpcrnn.generate.prompts import plan_prompt, plan_prompts, recipe_count  # noqa: PLC0415
        from hpcrnn.model.precision import resolve_precision  # noqa: PLC0415

        src = "lm.generate"
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{src}: n: {n!r} is not a positive number of recipes")
        values = dict(temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens, seed=seed)
        values.update(batch_size=batch_size, listed_bias=listed_bias, unlisted_bias=unlisted_bias)
        values.update(prompt_ingredients=prompt_ingredients)
        given = {k: v for k, v in values.items() if v is not None}
        # the config's own checks (types, ranges), so a value the job refuses is refused here too
        g: GenerateConfig = _build(
            GenerateConfig, {"num_recipes": n, **given}, "generate", src, base=self.config.generate
        )
        many = _prompt_list(prompt, src)
        g = dataclasses.replace(g, prompts=None)  # the config's prompts file is the job's, not this call's
        if many is None and prompt is not None:
            if not isinstance(prompt, str):
                raise ConfigError(f"{src}: prompt: expected a string or a list of strings, got {type(prompt).__name__}")
            g = dataclasses.replace(g, prompt=prompt_text(prompt, "generate.prompt", src))
        elif many is not None:
            g = dataclasses.replace(g, prompt="")
        cfg = dataclasses.replace(self.config, generate=g)
        cv = self._corpus_view()
        pp = plan_prompt(cfg, cv) if many is None else plan_prompts(cfg, cv, many)
        device = self.device
        precision = resolve_precision(g.precision, device, "generate", src, say=_warn_once)
        total = recipe_count(cfg, pp)
        texts: dict[int, str] = {}
        for i, shown, toks, _ in decode_recipes(cfg, cv, self.model, pp, list(range(1, total + 1)), device, precision):
            texts[i] = recipe_text(cv.vocab, cv.tokenizer, shown, toks)
        k = total // n  # prompts
        return [texts[j * k + p + 1] for p in range(k) for j in range(n)]

    def evaluate(self, text: str | os.PathLike) -> dict:
        """What ``python -m hpcrnn.evaluate --text FILE`` reports for ``text`` (a string of text, or a
        path as a ``pathlib.Path``), read exactly as the corpus was: ``loss``, ``ppl``, ``acc``, ``top5``,
        ``unk`` and ``tokens`` by the standard protocol. ``tokens`` is the number of tokens scored (predicted):
        every token after the first for a text under 512 tokens (one stream); a longer text is read as up
        to 10 streams of 256 tokens or more, each stream's first token unscored
        (``hpcrnn.evaluate.metrics.STANDARD_MIN_STREAM``)."""
        from hpcrnn.evaluate.metrics import score_file  # noqa: PLC0415

        was_training = self.model.training
        self.model.eval()
        try:
            if isinstance(text, os.PathLike):
                path = Path(text)
                return {
                    "source": str(path),
                    "protocol": "standard",
                    **score_file(self.model, self.vocab, path, self.device),
                }
            if not isinstance(text, str):
                raise InputError(f"lm.evaluate: expected text (str) or a path, got {type(text).__name__}")
            with tempfile.TemporaryDirectory(prefix="hpcrnn-evaluate-") as d:
                path = Path(d) / "text.txt"  # read like a .txt corpus file
                path.write_text(text, encoding="utf-8")
                try:
                    figures = score_file(self.model, self.vocab, path, self.device)
                except InputError as e:  # name the text, not the temporary file it was read from
                    raise InputError(str(e).replace(str(path), "lm.evaluate: the text")) from None
            return {"source": "<text>", "protocol": "standard", **figures}
        finally:
            self.model.train(was_training)


def _prompt_list(prompt, src: str) -> list[str] | None:
    """``prompt`` as a list of prompt texts (each checked as ``generate.prompt`` is), or None: one prompt."""
    if not isinstance(prompt, (list, tuple)):
        return None
    if not prompt:
        raise ConfigError(f"{src}: prompt: an empty list; give at least one prompt")
    out = []
    for k, p in enumerate(prompt):
        if not isinstance(p, str) or not p.strip():
            raise ConfigError(f"{src}: prompt[{k}]: {p!r} is not a prompt (a non-empty string)")
        out.append(prompt_text(p, "generate.prompt", f"{src}: prompt[{k}]"))
    return out


def load(path: str | os.PathLike, *, checkpoint: int | str | None = None, device: Any = "auto") -> LanguageModel:
    """A trained model from ``path``: a run directory or config file (its newest complete checkpoint, or
    ``checkpoint``: a step, a checkpoint folder, ``"last"`` the newest, or ``"best"`` the one with the lowest
    validation loss), or a model file of ``python -m hpcrnn.export``, which needs no corpus.h5. ``device``:
    "auto" (CUDA when present), "cpu", "cuda" or a torch.device. Problems are ``hpcrnn.errors.HpcrnnError``
    with a one-line message."""
    dev = _device(device)
    t = open_trained(path, checkpoint, dev)
    return LanguageModel(t.model, t.vocab, t.config, t.step, t.source, t.meta, t.corpus_path)


def initial_weights(cfg: Config, corpus) -> dict:
    """``train.init_from``'s weights (hpcrnn/train/init_from.py), kept here for old callers."""
    from hpcrnn.train.init_from import initial_weights as weights  # noqa: PLC0415

    return weights(cfg, corpus)
