"""The encoding half of preprocess: split documents, build the vocabulary, map and lay out the token stream
(written to ``corpus.h5`` by hpcrnn/data/write_h5.py)."""

from __future__ import annotations

import numpy as np

from hpcrnn.data.sources import SPLITS, ReadStats, Source
from hpcrnn.data.stream import _document_layout, _Layout, _read_stream, _specials, _Stream
from hpcrnn.data.write_h5 import BuiltCorpus
from hpcrnn.errors import InputError
from hpcrnn.text.tokenize import EOR, EOS, NL, TAB

_UNK_ID = 0  # <unk> opens every vocabulary


def _smallest_uint(n: int):
    for dt in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(dt).max + 1:
            return dt
    return np.uint64


def _log(msg: str) -> None:
    print(f"preprocess: {msg}", flush=True)


def _assign_splits(n: int, fractions: list[float], seed: int) -> np.ndarray:
    """Split ``n`` documents by a seeded shuffle: 0 train, 1 val, 2 test."""
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n_val + n_test >= n:  # keep at least one training document
        n_test = max(0, min(n_test, n - 1 - n_val))
        n_val = max(0, min(n_val, n - 1 - n_test))
    perm = np.random.default_rng(seed).permutation(n)
    split = np.zeros(n, dtype=np.uint8)
    split[perm[n - n_val - n_test : n - n_test]] = 1
    split[perm[n - n_test :]] = 2
    return split


def _split_documents(sources: list[Source], doc_src: list[int], settings: dict) -> np.ndarray:
    """The split of each document: the files of a {train, val, test} mapping, or a seeded shuffle."""
    if any(s.split for s in sources):
        split_of_src = np.array([SPLITS.index(s.split) for s in sources], dtype=np.uint8)
        return split_of_src[np.asarray(doc_src, dtype=np.int64)]
    return _assign_splits(len(doc_src), settings["split"], settings["seed"])


def _train_counts(stream: _Stream, layout: _Layout, doc_split: np.ndarray) -> np.ndarray:
    """Occurrences of each provisional id in the train documents."""
    n_types = stream.interner.next_id
    train_counts = np.zeros(n_types, dtype=np.int64)
    for c, ids in enumerate(stream.chunks):
        a, b = layout.first_doc[c], layout.first_doc[c + 1]
        is_train = np.repeat(doc_split[a:b] == 0, layout.lengths[a:b])
        train_counts += np.bincount(ids[is_train], minlength=n_types)
    return train_counts


def _given_vocabulary(stream: _Stream, layout: _Layout, doc_split: np.ndarray, given, sources: list[Source]):
    """As ``_vocabulary``, but the vocabulary of ``data.vocab_from`` in its own order: ids mean what they
    meant to the model trained on it, and the words it lacks become ``<unk>`` (or are dropped)."""
    train_counts = _train_counts(stream, layout, doc_split)
    return _choose_given_vocabulary(stream.interner, train_counts, stream.tokenizer, given, sources)


def _choose_given_vocabulary(interner, train_counts: np.ndarray, tokenizer: str, given, sources: list[Source]):
    """``_given_vocabulary`` from the train count of each provisional id (the sharded path merges them)."""
    seen = train_counts > 0
    # a word of the given vocabulary this corpus never has gets a provisional id no token carries
    final_prov = [interner[t.encode("utf-8")] for t in given.tokens]
    train_counts = np.pad(train_counts, (0, interner.next_id - len(train_counts)))
    specials, line_token = _specials(tokenizer)
    plain = [i for t, i in zip(given.tokens, final_prov) if t not in (*specials, line_token)]
    if not any(seen[i] for i in plain if i < len(seen)):
        raise InputError(
            f"{_train_name(sources)}: no word of the train split is in the vocabulary of data.vocab_from "
            f"({given.path}): another language, or another tokenization?"
        )
    return list(given.tokens), final_prov, train_counts


def _vocabulary(stream: _Stream, layout: _Layout, doc_split: np.ndarray, min_count: int, sources: list[Source]):
    """(vocabulary strings, their provisional ids, train counts per provisional id): from the train
    documents only; the specials first, then by descending count, ties by string."""
    train_counts = _train_counts(stream, layout, doc_split)
    return _choose_vocabulary(stream.interner, train_counts, stream.tokenizer, min_count, sources)


def _choose_vocabulary(interner, train_counts: np.ndarray, tokenizer: str, min_count: int, sources: list[Source]):
    """``_vocabulary`` from the train count of each provisional id (the sharded path merges them): the
    order of the provisional ids does not matter, only the counts and the strings."""
    specials, line_token = _specials(tokenizer)
    itos_prov = interner.itos()
    keep = train_counts >= min_count
    keep[[interner[t.encode()] for t in specials + [line_token]]] = True
    if tokenizer == "recipe" and TAB.encode() in interner:
        keep[interner[TAB.encode()]] = True  # the column break of structured formats is never <unk>
    special_ids = [interner[t.encode()] for t in specials]
    rest = [int(i) for i in np.flatnonzero(keep) if int(i) not in special_ids]
    rest.sort(key=lambda i: (-int(train_counts[i]), itos_prov[i]))
    final_prov = special_ids + rest
    vocab = [itos_prov[i].decode("utf-8") for i in final_prov]
    if len(vocab) <= len(set(specials + [line_token])):  # only the specials and the newline/EOS
        raise InputError(
            f"{_train_name(sources)}: the vocabulary is empty: no word occurs at least "
            f"data.min_count={min_count} times in the train split "
            f"({int(train_counts.sum())} tokens)"
        )
    return vocab, final_prov, train_counts


def _lookup_table(n_types: int, final_prov: list[int], n_vocab: int, drop: bool):
    """(provisional id -> final id, the drop sentinel or None): rare words map to ``<unk>`` (id 0) or,
    with ``drop``, to a sentinel beyond the vocabulary."""
    dtype = _smallest_uint(n_vocab + (1 if drop else 0))
    drop_id = np.iinfo(dtype).max if drop else None  # a sentinel beyond the vocabulary
    lut = np.full(n_types, drop_id if drop else _UNK_ID, dtype=dtype)
    lut[np.asarray(final_prov, dtype=np.int64)] = np.arange(len(final_prov), dtype=dtype)
    return lut, drop_id


def _map_to_vocabulary(stream: _Stream, layout: _Layout, final_prov: list[int], n_vocab: int, drop: bool):
    """Provisional ids -> final ids in place, chunk by chunk (the uint32 ids go as the small ones come);
    rare words become ``<unk>`` (id 0) or, with ``drop``, leave the stream and shorten their documents.
    Returns the lookup table and its drop sentinel (None without ``drop``)."""
    lut, drop_id = _lookup_table(stream.interner.next_id, final_prov, n_vocab, drop)
    lengths, offset = layout.lengths, layout.offset_in_chunk
    for c in range(len(stream.chunks)):
        ids = lut[stream.chunks[c]]
        stream.chunks[c] = None
        if drop:
            keep_tok = ids != drop_id
            cs = np.concatenate([[0], np.cumsum(keep_tok, dtype=np.int64)])
            a, b = layout.first_doc[c], layout.first_doc[c + 1]
            st = offset[a:b]
            lengths[a:b] = cs[st + lengths[a:b]] - cs[st]
            offset[a:b] = cs[st]
            ids = ids[keep_tok]
        stream.chunks[c] = ids
    return lut, drop_id


def _vocab_counts(lut: np.ndarray, drop_id, train_counts: np.ndarray, n_vocab: int) -> np.ndarray:
    """Train counts per final id from the per-type counts (np.bincount over the stream would first cast all
    of it to int64: 8 bytes a token)."""
    vocab_counts = np.zeros(n_vocab, dtype=np.int64)
    mapped_types = lut != drop_id if drop_id is not None else slice(None)
    np.add.at(vocab_counts, lut[mapped_types].astype(np.int64), train_counts[mapped_types])
    return vocab_counts


def _assemble(stream: _Stream, layout: _Layout, doc_split: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(the final stream in split order: train, val, test, input order inside each; that document order)."""
    order = np.argsort(doc_split, kind="stable")
    sorted_lengths = layout.lengths[order]
    tokens = np.empty(int(sorted_lengths.sum()), dtype=dtype)
    pos = 0
    for k, n in zip(order.tolist(), sorted_lengths.tolist()):  # one slice copy per document
        a = int(layout.offset_in_chunk[k])
        tokens[pos : pos + n] = stream.chunks[layout.chunk_of_doc[k]][a : a + n]
        pos += n
    stream.chunks = []
    return tokens, order


def _window_starts(ranges: dict, split_tokens: list[int], settings: dict, sources: list[Source]) -> dict[str, range]:
    """Window starts of each split, as ranges (8 bytes a window once written, so never materialized
    whole); no training window is an error, an empty val/test split a warning."""
    window, stride = settings["window"], settings["stride"]
    windows = {s: range(a, b - window, stride) for s, (a, b) in ranges.items()}
    if len(windows["train"]) == 0:
        raise InputError(
            f"{_train_name(sources)}: data.window={window} is longer than the train split "
            f"({split_tokens[0]} tokens): no training window fits"
            + ("" if any(len(w) for w in windows.values()) else " (nor in any split)")
        )
    for s in ("val", "test"):
        frac = settings["split"][SPLITS.index(s)]
        if len(windows[s]) == 0 and (frac > 0 or any(x.split == s for x in sources)):
            _log(f"warning: the {s} split ({ranges[s][1] - ranges[s][0]} tokens) holds no window of {window}+1 tokens")
    return windows


def _check_held_out_files(tokens: np.ndarray, vocab: list[str], ranges: dict, sources: list[Source]) -> None:
    """A val/test file of a {train, val, test} mapping whose words are all unknown is a mistake."""
    for s in ("val", "test"):
        a, b = ranges[s]
        n_words, n_known = _held_out_words(tokens[a:b], vocab)
        _check_held_out_split(s, n_words, n_known, sources)


def _held_out_words(seg: np.ndarray, vocab: list[str]) -> tuple[int, int]:
    """(words, words the vocabulary knows) of a stretch of final ids: line and document breaks are not words."""
    breaks = np.array([i for i, t in enumerate(vocab) if t in (EOR, EOS, NL)], dtype=seg.dtype)
    words = seg[~np.isin(seg, breaks)]
    return len(words), int(np.count_nonzero(words != _UNK_ID))


def _check_held_out_split(s: str, n_words: int, n_known: int, sources: list[Source]) -> None:
    if n_words and not n_known:
        files = ", ".join(str(x.path) for x in sources if x.split == s)
        raise InputError(
            f"{files}: every word of the {s} file is unknown to the vocabulary of the "
            f"train file {_train_name(sources)} (another language, or another "
            f"tokenization?)"
        )


def _build_corpus(cfg, settings: dict, sources: list[Source], given, batch_chars: int) -> BuiltCorpus:
    """Read, tokenize, split, count, map and lay out. ``given``: the vocabulary of ``data.vocab_from``
    (None without it); ``batch_chars``: the size of a tokenizing batch. Memory: the provisional uint32 ids
    of the whole stream plus the final stream (1-4 bytes a token); no per-window copies."""
    d = cfg.data
    stats = ReadStats()
    stream = _read_stream(d, sources, stats, batch_chars)
    layout = _document_layout(stream)
    n_types = stream.interner.next_id
    doc_split = _split_documents(sources, stream.doc_src, settings)
    if d.vocab_from:
        vocab, final_prov, train_counts = _given_vocabulary(stream, layout, doc_split, given, sources)
    else:
        vocab, final_prov, train_counts = _vocabulary(stream, layout, doc_split, d.min_count, sources)
    drop = d.rare == "drop"
    total_before = int(layout.lengths.sum())
    lut, drop_id = _map_to_vocabulary(stream, layout, final_prov, len(vocab), drop)
    tokens, order = _assemble(stream, layout, doc_split, lut.dtype)
    sorted_lengths, sorted_split = layout.lengths[order], doc_split[order]
    starts, split_tokens, ranges, windows = _positions(sorted_lengths, sorted_split, settings, sources)
    if any(x.split for x in sources):
        _check_held_out_files(tokens, vocab, ranges, sources)
    types_seen = n_types - (0 if stream.closes_with_eor else 1)
    unk_total = int(np.count_nonzero(tokens == _UNK_ID))
    dropped = (total_before - len(tokens)) if drop else 0
    counts = _corpus_counts(sorted_split, split_tokens, windows, len(vocab), types_seen, unk_total, dropped, stats)
    return BuiltCorpus(
        tokens=tokens,
        vocab=vocab,
        vocab_counts=_vocab_counts(lut, drop_id, train_counts, len(vocab)),
        starts=starts,
        doc_split=sorted_split,
        doc_index=order.astype(np.int64, copy=False),
        doc_source=np.asarray(stream.doc_src, dtype=np.int32)[order],
        ingredient_lines=np.asarray(stream.doc_ingr, dtype=np.int32).reshape(-1, 2)[order],
        windows=windows,
        ranges=ranges,
        counts=counts,
    )


def _positions(sorted_lengths: np.ndarray, sorted_split: np.ndarray, settings: dict, sources: list[Source]):
    """(document starts, tokens of each split, split ranges, window starts) of documents stored in split
    order with these lengths."""
    starts = np.zeros(len(sorted_lengths), dtype=np.int64)
    np.cumsum(sorted_lengths[:-1], out=starts[1:])
    split_tokens = [int(sorted_lengths[sorted_split == k].sum()) for k in range(3)]
    ranges, windows = split_positions(split_tokens, settings, sources)
    return starts, split_tokens, ranges, windows


def split_positions(split_tokens: list[int], settings: dict, sources: list[Source]):
    """(split ranges, window starts) of a stream that holds ``split_tokens`` tokens of train, val, test."""
    bounds = np.cumsum([0] + split_tokens)
    ranges = {s: [int(bounds[i]), int(bounds[i + 1])] for i, s in enumerate(SPLITS)}
    return ranges, _window_starts(ranges, split_tokens, settings, sources)


def _corpus_counts(sorted_split, split_tokens, windows, n_vocab, types_seen, unk_total, dropped, stats) -> dict:
    """The corpus file's ``counts`` (the same keys, in the same order, for the sharded path)."""
    n_tok = sum(split_tokens)
    return {
        "documents": len(sorted_split),
        "documents_by_split": dict(zip(SPLITS, [int((sorted_split == k).sum()) for k in range(3)])),
        "tokens": n_tok,
        "tokens_by_split": dict(zip(SPLITS, split_tokens)),
        "windows": {s: int(len(w)) for s, w in windows.items()},
        "vocab_size": n_vocab,
        "types_seen": types_seen,
        "unk_tokens": unk_total,
        "unk_rate": unk_total / max(1, n_tok),
        "dropped_tokens": dropped,
        **_read_counts(stats),
    }


def _read_counts(stats: ReadStats) -> dict:
    """The counts of reading the inputs (the last entries of the corpus's ``counts``, in this order)."""
    return {
        "repaired_documents": stats.repaired_documents,
        "repaired_chars": stats.repaired_chars,
        "fallback_lines": stats.fallback_lines,
        "control_chars_removed": stats.control_chars,
        "preamble_chars": stats.preamble_chars,
        "input_bytes": stats.bytes,
        "input_chars": stats.chars,
        "formats": dict(stats.formats),
    }


def _train_name(sources: list[Source]) -> str:
    train = [s for s in sources if s.split in (None, "train")]
    return str((train or sources)[0].path)
