"""`python -m hpcrnn.export CONFIG|RUN_DIR [--checkpoint STEP|best|last] -o FILE`: one self-contained model file.

The file (layout: hpcrnn/model/file.py) holds the weights of the run's newest complete checkpoint (or
``--checkpoint``), its vocabulary, how text becomes tokens, the model config and where it came from
(run, step, corpus fingerprint, metrics). ``hpcrnn.load(FILE)``, ``generate.checkpoint: FILE`` and
``train.init_from: FILE`` use it without the run's corpus.h5; ``torch.load(FILE, weights_only=True)``
reads it as plain values and tensors.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from hpcrnn import __version__
from hpcrnn.cli import add_checkpoint_option, make_parser, run_cli
from hpcrnn.config import Config
from hpcrnn.errors import EXIT_OK, InputError
from hpcrnn.run.checkpoints import MARKER

__all__ = ["ExportResult", "run_export", "main", "inside_checkpoints"]

_STEP = re.compile(r"^step-\d{8,}$")  # a checkpoint folder's name (hpcrnn.run.checkpoints.step_dir_name)


@dataclass
class ExportResult:
    path: Path
    step: int
    checkpoint: Path
    exit_code: int = EXIT_OK


def inside_checkpoints(out: Path, cfg: Config | None = None) -> Path | None:
    """The run's checkpoint folder (or checkpoint) that ``out`` would be written into, else None.

    The rule, on the path with its links resolved: inside ``cfg``'s own checkpoint directory; or inside a
    folder named ``checkpoints`` of any run (the folder holds ``step-*`` folders, or its parent holds the
    run's ``config.yaml``); or inside a marked checkpoint folder wherever it lies. A file written there
    would stand for (or beside) the checkpoint a reader trusts by its checksums."""
    real = Path(out).expanduser().absolute().resolve()
    own = cfg.checkpoint_dir.expanduser().absolute().resolve() if cfg is not None else None
    for folder in real.parents:
        if folder == own:
            return folder
        if folder.name == "checkpoints" and (
            (folder.parent / "config.yaml").is_file() or any(_STEP.match(p.name) for p in folder.glob("step-*"))
        ):
            return folder
        if _STEP.match(folder.name) and (folder / MARKER).is_file():
            return folder
    return None


def run_export(cfg: Config, out, checkpoint: str | None = None) -> ExportResult:
    """Write the model file of the run of ``cfg`` to ``out``; the checkpoint must fit the run's corpus."""
    from hpcrnn.data.corpus import open_corpus  # noqa: PLC0415 -- torch and h5py only once arguments are good
    from hpcrnn.generate.corpus_view import CorpusView  # noqa: PLC0415
    from hpcrnn.generate.prompts import title_prefix  # noqa: PLC0415
    from hpcrnn.model.file import Vocabulary, write_model_file  # noqa: PLC0415
    from hpcrnn.model.restore import open_checked  # noqa: PLC0415

    out = Path(out).expanduser().absolute()
    if out.is_dir():
        raise InputError(f"-o {out}: a directory; give the model file's name, e.g. {out / (cfg.run.name + '.pt')}")
    inside = inside_checkpoints(out, cfg)
    if inside is not None:
        raise InputError(
            f"-o {out}: inside a run's checkpoints, {inside} (readers would skip or trust a replaced "
            f"file); write the model file elsewhere, e.g. {cfg.run_dir / (cfg.run.name + '.pt')}"
        )
    corpus = open_corpus(cfg.h5_path)
    info, model, meta = open_checked(cfg, corpus, checkpoint)
    config = cfg.to_dict()
    config["model"] = dict(meta["config"]["model"])  # the shape the weights have
    provenance = {
        "run": cfg.run.name,
        "step": info.step,
        "checkpoint": str(info.path),
        "done": bool(meta.get("done")),
        "corpus": str(cfg.h5_path),
        "corpus_fingerprint": corpus.fingerprint,
        "corpus_sources": list(corpus.attrs.get("sources") or []),
        "metrics": {"val_loss": meta.get("val_loss"), "final": meta.get("final") or {}},
        "trained_with": meta.get("hpcrnn_version"),
        "hpcrnn_version": __version__,
        "init_from": cfg.train.init_from,
    }
    title = title_prefix(CorpusView.open(cfg.h5_path))
    write_model_file(
        out,
        weights=model.state_dict(),
        vocabulary=Vocabulary.from_corpus(corpus),
        title_ids=title,
        config=config,
        provenance=provenance,
    )
    size = out.stat().st_size
    print(
        f"hpcrnn.export: wrote {out} ({size / 1e6:.1f} MB): {cfg.run.name} step {info.step}, "
        f"{cfg.model.cell.upper()} vocab {len(corpus.vocab):,}",
        flush=True,
    )
    return ExportResult(out, info.step, info.path)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        "hpcrnn.export",
        "Write a run's checkpoint as one self-contained model file (weights, vocabulary, tokenizer settings, "
        "model config, provenance).",
    )
    parser.add_argument("-o", "--output", metavar="FILE", required=True, help="the model file to write")
    add_checkpoint_option(parser)
    return run_cli(parser, lambda cfg, args: run_export(cfg, args.output, args.checkpoint), argv)


if __name__ == "__main__":
    sys.exit(main())
