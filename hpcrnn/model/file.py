"""A trained model outside its run: the self-contained model file, and the vocabulary of a run or a file.

The model file (``python -m hpcrnn.export RUN_DIR -o FILE``) is one ``torch.save`` of plain values and
tensors only, so ``torch.load(FILE, weights_only=True)`` reads it without running code from it:

    format, format_version   "hpcrnn-model", 1
    weights                  the model's state_dict
    vocab, vocab_hash        token strings by id, and the sha256 of their newline-joined text (as corpus.h5)
    text                     how text becomes tokens: tokenizer, document_start, format, repair, rare,
                             min_count, window, and ``title`` (the ids that open a recipe, see
                             hpcrnn/generate/prompts.py)
    model                    the model section of the config (cell, hidden, layers, embedding, ...)
    config                   the run's resolved config (its generate section gives lm.generate's defaults)
    provenance               run, step, checkpoint, corpus file and fingerprint, metrics, hpcrnn version, time

``data.vocab_from`` reads a vocabulary through hpcrnn/data/vocab_from.py. torch is imported only where a
model file is read or written, so the launcher and preprocessing without one never import it.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from hpcrnn.errors import InputError, StorageError
from hpcrnn.fsutil import atomic_write_bytes
from hpcrnn.text.tokenize import EOR, EOS, NL, TOKENIZERS, UNK

FORMAT = "hpcrnn-model"
FORMAT_VERSION = 1
# how text becomes tokens: the part of hpcrnn.config.CORPUS_KEYS a model file needs to read new text (in
# the order model files have always stored them)
TEXT_KEYS = ("tokenizer", "document_start", "format", "repair", "rare", "min_count", "window")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip archive
_HOW = "export one with python -m hpcrnn.export RUN_DIR -o FILE"


def vocab_hash_of(vocab: list[str]) -> str:
    """The vocabulary's identity, computed as corpus.h5 records it."""
    return hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest()


@dataclass
class Vocabulary:
    """A model's tokens by id and how text becomes tokens. Reads like the list of tokens (``len``, ``[i]``,
    ``in``); ``encode``/``decode`` go between text and ids. It also stands for a corpus where only these are
    needed (``hpcrnn.data.corpus.encode_file``, held-out scoring): ``attrs``, ``stoi``, the special ids."""

    tokens: list[str]
    tokenizer: str
    settings: dict  # the data.* settings text is read with (TEXT_KEYS)
    path: Path  # the file it came from (named in messages)
    title_ids: list[int] | None = None  # the ids that open a recipe; None: derive them from the corpus
    vocab_hash: str = field(default="")

    def __post_init__(self):
        self.vocab_hash = self.vocab_hash or vocab_hash_of(self.tokens)

    @classmethod
    def from_corpus(cls, corpus) -> Vocabulary:
        """The vocabulary of an open ``hpcrnn.data.corpus.Corpus``."""
        settings = {k: corpus.attrs.get(k) for k in TEXT_KEYS}
        return cls(list(corpus.vocab), corpus.tokenizer, settings, Path(corpus.path), None, corpus.vocab_hash)

    # the list of tokens
    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i):
        return self.tokens[i]

    def __iter__(self):
        return iter(self.tokens)

    def __contains__(self, token) -> bool:
        return token in self.stoi

    def __repr__(self) -> str:
        return f"Vocabulary({len(self.tokens)} tokens, tokenizer={self.tokenizer}, {self.vocab_hash[:12]})"

    # what the corpus reader offers, for the code that reads text like the corpus
    @cached_property
    def stoi(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    @property
    def vocab(self) -> list[str]:
        return self.tokens

    @property
    def attrs(self) -> dict:
        return self.settings

    @property
    def window(self) -> int:
        return int(self.settings.get("window") or 1)

    @property
    def unk_id(self) -> int:
        return self.stoi[UNK]

    @property
    def eor_id(self) -> int | None:
        return self.stoi.get(EOR)

    @property
    def eos_id(self) -> int | None:
        return self.stoi.get(EOS)

    @property
    def nl_id(self) -> int | None:
        return self.stoi.get(NL)

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` as the corpus' tokenizer splits it (unknown words: ``<unk>``)."""
        from hpcrnn.text.tokenize import tokenize  # noqa: PLC0415

        get, unk = self.stoi.get, self.unk_id
        return [get(t, unk) for t in tokenize(text, self.tokenizer)]

    def decode(self, ids) -> str:
        """Text of ``ids``, laid out as generated recipes are."""
        from hpcrnn.text.detokenize import detokenize  # noqa: PLC0415

        return detokenize([self.tokens[int(i)] for i in ids], self.tokenizer)


def _check_vocab(vocab: Any, tokenizer: Any, path: Path) -> None:
    if tokenizer not in TOKENIZERS:
        raise InputError(f"{path}: tokenizer {tokenizer!r} is not one of {'|'.join(TOKENIZERS)}")
    if not isinstance(vocab, list) or len(vocab) < 2 or not all(isinstance(t, str) for t in vocab):
        raise InputError(f"{path}: the vocabulary is not a list of token strings")
    if vocab[0] != UNK or len(set(vocab)) != len(vocab):
        raise InputError(f"{path}: not an hpcrnn vocabulary (<unk> first, each token once)")


# ------------------------------------------------------------------------------------------ the model file


def is_model_file(path) -> bool:
    """Whether ``path`` is a file in torch's zip format (a model file, another torch file, or a truncated
    one: the zip's first bytes): what tells a model file from a YAML config or a corpus."""
    p = Path(path)
    try:
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            return f.read(4) == _ZIP_MAGIC
    except OSError:
        return False


@dataclass
class ModelFile:
    """A model file as read (``read_model_file``): everything to rebuild and use the model."""

    path: Path
    weights: dict
    vocabulary: Vocabulary
    model: dict  # the model config section
    config: dict  # the run's resolved config
    provenance: dict

    @property
    def step(self) -> int:
        return int(self.provenance.get("step") or 0)

    @property
    def meta(self) -> dict:
        """What a checkpoint's meta.json says of its model, for the code that checks a checkpoint."""
        p = self.provenance
        return {
            "step": self.step,
            "config": {**self.config, "model": self.model},
            "vocab_hash": self.vocabulary.vocab_hash,
            "vocab_size": len(self.vocabulary),
            "corpus_fingerprint": p.get("corpus_fingerprint"),
            "final": (p.get("metrics") or {}).get("final") or {},
            "val_loss": (p.get("metrics") or {}).get("val_loss"),
        }

    def model_config(self):
        """The ModelConfig, validated like a config file's model section."""
        from hpcrnn.config import from_dict  # noqa: PLC0415

        return from_dict({"model": self.model}, f"{self.path} (model)").model

    def build_model(self, device: Any = "cpu"):
        """The trained model in eval mode; weights that do not fit the recorded shape are an InputError."""
        from hpcrnn.model.rnn import build_model, check_weights  # noqa: PLC0415

        cfg = self.model_config()
        check_weights(cfg, len(self.vocabulary), self.weights, str(self.path))  # before any allocation
        model = build_model(cfg, len(self.vocabulary))
        try:
            model.load_state_dict(self.weights)
        except (RuntimeError, TypeError, KeyError) as e:
            first = str(e).replace("\n", " ").replace("\t", " ")[:200]
            raise InputError(f"{self.path}: the weights do not fit its model section: {first}") from None
        return model.to(device).eval()


def read_model_file(path) -> ModelFile:
    """Read and check a model file; every way it can be wrong is a one-line InputError naming it."""
    import torch  # noqa: PLC0415

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: model file not found")
    if not p.is_file():
        raise InputError(f"{p}: not a model file (a directory)")
    if not is_model_file(p):
        raise InputError(f"{p}: not an hpcrnn model file ({_HOW})")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(
            f"{p}: holds objects other than tensors and plain values, which are not loaded (they could run "
            f"code): {str(e).splitlines()[-1][:120]}"
        ) from None
    except Exception as e:  # torch reports a damaged archive in many exception types
        msg = str(e).splitlines()[0][:160] if str(e) else e.__class__.__name__
        raise InputError(f"{p}: not a readable model file (truncated or corrupt?): {msg}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = " (a checkpoint's model.pt holds weights only: give its run directory, or export it)"
        raise InputError(f"{p}: a torch file, but not an hpcrnn model file{hint if isinstance(obj, dict) else ''}")
    if obj.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{p}: model file version {obj.get('format_version')!r}, this hpcrnn reads {FORMAT_VERSION}")
    text, vocab = obj.get("text"), obj.get("vocab")
    weights, model, config = obj.get("weights"), obj.get("model"), obj.get("config")
    for name, value in (("text", text), ("weights", weights), ("model", model), ("config", config)):
        if not isinstance(value, dict):
            raise InputError(f"{p}: damaged model file: {name!r} is missing or not a mapping")
    if not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(f"{p}: damaged model file: 'weights' holds something other than tensors")
    _check_vocab(vocab, text.get("tokenizer"), p)
    if vocab_hash_of(vocab) != obj.get("vocab_hash"):
        raise InputError(f"{p}: the vocabulary does not match its recorded hash (damaged file)")
    title = text.get("title")
    if title is not None and not (
        isinstance(title, list) and all(isinstance(i, int) and 0 <= i < len(vocab) for i in title)
    ):
        raise InputError(f"{p}: damaged model file: text.title is not a list of token ids")
    settings = {k: text.get(k) for k in TEXT_KEYS}
    vocabulary = Vocabulary(list(vocab), str(text["tokenizer"]), settings, p, title, obj["vocab_hash"])
    return ModelFile(p, weights, vocabulary, model, config, _check_provenance(obj.get("provenance"), p))


def _check_provenance(prov: Any, p: Path) -> dict:
    """The provenance mapping, the fields the model's users read checked (each a one-line InputError naming
    the field); the rest is information, kept as it is."""
    if prov is None:
        return {}

    def bad(field: str, value: Any, what: str) -> InputError:
        return InputError(f"{p}: damaged model file: {field}: {repr(value)[:60]} is not {what}")

    if not isinstance(prov, dict):
        raise bad("provenance", prov, "a mapping")
    step = prov.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise bad("provenance.step", step, "a step number")
    fingerprint = prov.get("corpus_fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise bad("provenance.corpus_fingerprint", fingerprint, "a fingerprint (text)")
    metrics = prov.get("metrics")
    if metrics is None:
        return dict(prov)
    if not isinstance(metrics, dict):
        raise bad("provenance.metrics", metrics, "a mapping")
    if metrics.get("final") is not None and not isinstance(metrics["final"], dict):
        raise bad("provenance.metrics.final", metrics["final"], "a mapping")
    loss = metrics.get("val_loss")
    if loss is not None and (isinstance(loss, bool) or not isinstance(loss, (int, float))):
        raise bad("provenance.metrics.val_loss", loss, "a number")
    return dict(prov)


def write_model_file(
    path, *, weights: dict, vocabulary: Vocabulary, title_ids: list[int], config: dict, provenance: dict
) -> None:
    """Write a model file atomically (temporary name, fsync, rename); StorageError when it cannot be written."""
    import torch  # noqa: PLC0415

    text = {k: vocabulary.settings.get(k) for k in TEXT_KEYS}
    text["tokenizer"] = vocabulary.tokenizer
    text["title"] = [int(i) for i in title_ids]
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights": {k: v.detach().cpu().contiguous() for k, v in weights.items()},
        "vocab": list(vocabulary.tokens),
        "vocab_hash": vocabulary.vocab_hash,
        "text": _plain(text),
        "model": dict(config["model"]),
        "config": config,
        "provenance": {**_plain(provenance), "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    buf = io.BytesIO()
    torch.save(obj, buf)
    out = Path(path)
    try:
        atomic_write_bytes(out, buf.getvalue())
    except OSError as e:
        raise StorageError(f"{out}: cannot write the model file: {e.strerror or e}") from None


def _plain(d: dict) -> dict:
    """numpy scalars (HDF5 attributes) as Python values, so weights_only loading accepts them."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _plain(v)
        elif hasattr(v, "item") and not isinstance(v, (list, str)):
            v = v.item()
        out[k] = v
    return out


# ------------------------------------------------------------------------------- data.vocab_from's sources
