"""What generation reads from a corpus: the token stream, document bounds and splits, the vocabulary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcrnn.data.corpus import open_corpus
from hpcrnn.data.sequences import document_token_id
from hpcrnn.errors import InputError
from hpcrnn.text.detokenize import detokenize


@dataclass
class CorpusView:
    """The corpus as generation sees it, loaded once (``CorpusView.open``)."""

    path: Path
    vocab: list[str]
    vocab_hash: str
    stoi: dict
    unk_id: int
    eor_id: int | None  # None for whitespace corpora: their documents end with no special token
    boundary_id: int  # what precedes a document in the stream: EOR, else EOS (end of the last line)
    tokenizer: str
    window: int
    tokens: np.ndarray
    starts: np.ndarray  # document start offsets (the format stores one per document)
    ends: np.ndarray  # document ends, the closing end-of-recipe token excluded
    split: np.ndarray  # 0 train, 1 val, 2 test per document
    title_ids: list[int] | None = None  # the ids that open a recipe; None: derived from the documents

    @classmethod
    def open(cls, path: Path) -> CorpusView:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: corpus not found (run the preprocess stage first)")
        c = open_corpus(path)
        tokens = np.asarray(c.tokens())
        starts = np.asarray(c.documents(), dtype=np.int64)
        nxt = np.append(starts[1:], len(tokens)).astype(np.int64)
        eor = None if c.eor_id is None else int(c.eor_id)
        ends = nxt.copy()
        if len(ends) and eor is not None:
            closing = tokens[np.maximum(nxt - 1, 0)] == eor
            ends[closing & (nxt > starts)] -= 1
        boundary = _boundary(c)
        return cls(
            path,
            list(c.vocab),
            str(c.vocab_hash),
            dict(c.stoi),
            int(c.unk_id),
            eor,
            int(boundary),
            str(c.tokenizer),
            int(c.window),
            tokens,
            starts,
            ends,
            np.asarray(c.document_split(), dtype=np.int64),
        )

    @classmethod
    def of_vocabulary(cls, v) -> CorpusView:
        """A view with the vocabulary of a model file (``hpcrnn.model.file.Vocabulary``) and no text: prompts
        and decoding work, the figures that compare with real recipes and ``random`` prompts do not."""
        eor = v.eor_id
        boundary = _boundary(v)
        none = np.zeros(0, dtype=np.int64)
        return cls(
            Path(v.path),
            list(v.tokens),
            v.vocab_hash,
            dict(v.stoi),
            int(v.unk_id),
            eor,
            int(boundary),
            v.tokenizer,
            v.window,
            none,
            none,
            none,
            none,
            list(v.title_ids or []),
        )

    @property
    def has_text(self) -> bool:
        """Whether the corpus text is here (not so for a model file's vocabulary)."""
        return len(self.tokens) > 0

    @property
    def stop_id(self) -> int:
        return self.eor_id if self.eor_id is not None else -1  # -1: never sampled, run to max_tokens

    def ids(self, toks: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, self.unk_id) for t in toks]

    def text(self, ids: Sequence[int]) -> str:
        return detokenize([self.vocab[i] for i in ids], self.tokenizer)

    def docs(self, split: int) -> np.ndarray:
        return np.nonzero(self.split == split)[0]

    def doc_tokens(self, d: int) -> list[int]:
        """Document ``d`` without its closing end-of-recipe token."""
        return self.tokens[self.starts[d] : self.ends[d]].tolist()

    def split_stream(self, split: int) -> np.ndarray:
        """The token stream of one split's documents; documents that are not adjacent are joined by a
        separator outside the vocabulary, so no copied run crosses a gap."""
        d = self.docs(split)
        if len(d) == 0:
            return np.zeros(0, dtype=np.int64)
        lo, hi = self.starts[d], np.append(self.starts[1:], len(self.tokens))[d]
        if np.all(lo[1:] == hi[:-1]):
            return np.asarray(self.tokens[lo[0] : hi[-1]])
        sep = np.array([len(self.vocab)], dtype=np.int64)
        parts = []
        for a, z in zip(lo, hi):
            parts += [self.tokens[a:z].astype(np.int64), sep]
        return np.concatenate(parts)

    def split_region(self, split: int) -> tuple[int, int] | None:
        """(lo, hi) of the tokens of one split when they are contiguous (as the corpus lays them out)."""
        d = self.docs(split)
        if len(d) == 0:
            return None
        hi_all = np.append(self.starts[1:], len(self.tokens))
        return int(self.starts[d[0]]), int(hi_all[d[-1]])


def _boundary(vocab) -> int:
    """What precedes a document in the stream (the one rule, data.sequences.document_token_id); a vocabulary
    with neither <eor> nor <eos> feeds <unk> there, so generation still has a first token."""
    b = document_token_id(vocab)
    return int(vocab.unk_id if b is None else b)
