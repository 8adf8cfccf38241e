"""Typed experiment configuration: YAML + dotted overrides + ${VAR} expansion, validated.

One YAML file describes a whole experiment in sections (run, paths, data, model, train, generate, slurm).
Every stage resolves it the same way:

    cfg = load_config("configs/lstm256.yaml", ["train.max_steps=200", "model.cell=gru"])

Relative paths resolve against the *current working directory* of the command that first resolves the
config (for the shipped configs: the repository root). The resolved config written to
``<run dir>/config.yaml`` holds absolute paths only, so a job requeued hours later, from any directory,
runs exactly what was submitted.

Errors are ``ConfigError`` with one line naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import signal
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from hpcrnn.errors import ConfigError, StorageError
from hpcrnn.fsutil import atomic_write_text

RESOLVED_NAME = "config.yaml"


def _f(default=dataclasses.MISSING, *, factory=None, min=None, max=None, gt=None, lt=None, help=""):
    """A dataclass field with range metadata the validator checks."""
    meta = {"min": min, "max": max, "gt": gt, "lt": lt, "help": help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    name: str = ""  # default: the config file's stem


@dataclass
class PathsConfig:
    scratch: str = "scratch"  # root of everything a run writes; point it at $SCRATCH on a cluster
    jobs: str = "jobs"  # submitit job folders (sbatch scripts, pickles, logs)


@dataclass
class DataConfig:
    # a file (.txt/.xz/.gz), a directory, a list of these, or {train: PATH, val: PATH, test: PATH}
    corpus: Any = ""
    format: Literal["auto", "plain", "mastercook", "mealmaster"] = "auto"
    document_start: str | None = None  # regex that starts a document, e.g. "^Title:"
    tokenizer: Literal["recipe", "whitespace", "char"] = "recipe"
    # words seen fewer times in the train split become <unk>; default: 5, or 1 for the char tokenizer
    # (every character of the corpus is kept)
    min_count: int | None = _f(None, min=1)
    rare: Literal["unk", "drop"] = "unk"
    repair: bool = True  # repair cp437-read-as-latin-1 mojibake where the evidence is clear
    window: int = _f(50, min=1)  # tokens a training sequence (windows), a TBPTT step (stream)
    stride: int | None = _f(None, min=1)  # default: the window
    # how training reads the corpus (hpcrnn/data/sequences.py): independent windows from a zero state (the
    # lecture's formulation), contiguous streams with the state carried (truncated BPTT), or whole
    # documents from their start
    sequences: Literal["windows", "stream", "documents"] = "windows"
    # documents mode: tokens of a document per forward chunk; a longer one continues in the next chunk with
    # its state carried (the default holds 99% of the shared corpus' recipes in one chunk)
    max_len: int = _f(768, min=2)
    split: list[float] = _f(factory=lambda: [0.9, 0.05, 0.05])
    seed: int = 0
    h5_path: str | None = None  # default: <run dir>/corpus.h5
    # a run directory or model file whose vocabulary this corpus takes (words it lacks become <unk>;
    # min_count is not used), so that train.init_from's weights fit
    vocab_from: str | None = None


@dataclass
class ModelConfig:
    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    hidden: int = _f(256, min=1)
    layers: int = _f(1, min=1)
    embedding: int = _f(256, min=1)
    dropout: float = _f(0.0, min=0.0, lt=1.0)
    tie_weights: bool = False  # needs embedding == hidden
    # positions of the document so far that a pointer may copy a word from (hpcrnn/train/pointer.py:
    # pointer sentinel mixture); 0: no pointer, the plain recurrent LM
    pointer: int = _f(0, min=0)


@dataclass
class TrainConfig:
    batch_size: int = _f(128, min=1)  # global batch, split evenly over the ranks
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = _f(2e-3, gt=0.0)
    momentum: float = _f(0.0, min=0.0, lt=1.0)
    weight_decay: float = _f(0.0, min=0.0)
    schedule: Literal["constant", "cosine", "plateau"] = "constant"
    warmup_steps: int = _f(0, min=0)
    min_lr: float = _f(0.0, min=0.0)
    plateau_factor: float = _f(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = _f(2, min=0)
    clip_grad: float = _f(1.0, min=0.0)  # 0 disables clipping
    loss: Literal["all", "last"] = "all"
    max_steps: int = _f(0, min=0)  # 0: use epochs
    epochs: float = _f(1.0, gt=0.0)
    seed: int = 0
    deterministic: bool = False  # deterministic kernels: a resumed run is bitwise identical (CPU)
    threads: int = _f(0, min=0)  # torch CPU threads; 0: SLURM_CPUS_PER_TASK or torch's default
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # CUDA only (the CPU trains in fp32): auto is bf16 where the GPU has it natively (Ampere and later),
    # else fp16 with a gradient scaler (V100); bf16 on a GPU without it is refused before training
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    bf16: bool | None = None  # the older spelling: true is precision auto, false is fp32
    num_workers: int = _f(0, min=0)
    checkpoint_every: int = _f(500, min=1)
    eval_every: int = _f(500, min=1)
    eval_batches: int = _f(0, min=0)  # 0: the whole val split
    log_every: int = _f(50, min=1)
    # read the device-side non-finite-loss flag every N steps (and before every checkpoint and the end);
    # 0: every step on the CPU, every log_every steps on CUDA (no host sync per step)
    nonfinite_check_every: int = _f(0, min=0)
    keep_last: int = _f(2, min=2)
    time_limit: float = _f(0.0, min=0.0)  # seconds of wall clock; 0: none
    stop_signal: str = "SIGUSR2"
    progress: Literal["auto", "bar", "lines"] = "auto"
    # a run directory (its newest complete checkpoint) or model file whose weights a new run starts from
    init_from: str | None = None
    # end training after this many validations without a better validation loss; 0: off
    early_stop_patience: int = _f(0, min=0)
    tensorboard: bool = False  # also write metrics.jsonl's scalars as TensorBoard events to <run dir>/tensorboard/


@dataclass
class GenerateConfig:
    name: str = "default"
    checkpoint: str | None = None  # a checkpoint dir or step number; default: newest complete
    num_recipes: int = _f(100, min=1)
    # slots decoded together: per-step costs amortise over them (see bench/bench_generate.py)
    batch_size: int = _f(1024, min=1)
    temperature: float = _f(0.8, min=0.0)
    top_k: int = _f(0, min=0)
    top_p: float = _f(1.0, gt=0.0, max=1.0)
    max_tokens: int = _f(600, min=1)
    seed: int = 0
    # "": the start of a recipe; "random": a random data.window-token window of test text; "file:PATH": the
    # text of a file (read when the config is loaded: the resolved config holds the text)
    prompt: str = ""
    shards: int = _f(1, min=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quality_sample: int = _f(200, min=0)  # held-out test recipes scored for comparison
    # the matrix products (most of a step's work) in bf16 where the hardware multiplies bf16 natively
    # (CUDA, CPUs with AMX or AVX512-BF16; bf16 elsewhere runs fp32 and says so), as autocast does; state
    # and sampling stay fp32. auto resolves once per output folder (generated/<name>/plan.json)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


@dataclass
class SlurmResources:
    """Resources of one stage's job. In slurm.preprocess|train|generate, None inherits slurm.defaults."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int | None = _f(None, min=1)
    nodes: int | None = _f(None, min=1)
    tasks_per_node: int | None = _f(None, min=1)
    gpus_per_node: int | None = _f(None, min=0)
    cpus_per_task: int | None = _f(None, min=1)
    mem_gb: float | None = _f(None, gt=0.0)
    constraint: str | None = None
    signal_delay_s: int | None = _f(None, min=0)
    additional: dict | None = None  # extra sbatch parameters, e.g. {mail-type: END}


def _default_resources() -> SlurmResources:
    return SlurmResources(
        time_min=60, nodes=1, tasks_per_node=1, gpus_per_node=0, cpus_per_task=2, signal_delay_s=90, additional={}
    )


@dataclass
class SlurmConfig:
    defaults: SlurmResources = _f(factory=_default_resources)
    preprocess: SlurmResources = _f(factory=SlurmResources)
    train: SlurmResources = _f(factory=SlurmResources)
    generate: SlurmResources = _f(factory=SlurmResources)
    max_num_timeout: int = _f(3, min=0)  # submitit's cap on time-limit requeues

    def for_stage(self, stage: str) -> SlurmResources:
        merged = dataclasses.asdict(self.defaults)
        for k, v in dataclasses.asdict(getattr(self, stage)).items():
            if v is not None:
                merged[k] = v
        return SlurmResources(**merged)


@dataclass
class Config:
    run: RunConfig = _f(factory=RunConfig)
    paths: PathsConfig = _f(factory=PathsConfig)
    data: DataConfig = _f(factory=DataConfig)
    model: ModelConfig = _f(factory=ModelConfig)
    train: TrainConfig = _f(factory=TrainConfig)
    generate: GenerateConfig = _f(factory=GenerateConfig)
    slurm: SlurmConfig = _f(factory=SlurmConfig)
    source: str = field(default="", compare=False, repr=False)  # the file it came from (not saved)

    @property
    def run_dir(self) -> Path:
        return Path(self.paths.scratch) / self.run.name

    @property
    def jobs_dir(self) -> Path:
        return Path(self.paths.jobs) / self.run.name

    @property
    def h5_path(self) -> Path:
        return Path(self.data.h5_path) if self.data.h5_path else self.run_dir / "corpus.h5"

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------- validation

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand_env(value: str, key: str, src: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name in os.environ:
            return os.environ[name]
        if m.group(2) is not None:
            return m.group(2)
        raise ConfigError(f"{src}: {key}: environment variable ${{{name}}} is not set")

    return _ENV.sub(sub, value)


# Config strings reach sbatch scripts, shell lines and file names: no control characters there. Only the
# prompt is text to feed the model, where newlines and tabs are its layout.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PROMPT_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TEXT_KEYS = {"generate.prompt"}
_ADDITIONAL_KEY = re.compile(r"[a-z0-9][a-z0-9_-]*")  # sbatch option names (_ is written as -)
_UNCATCHABLE = {"SIGKILL", "SIGSTOP"}


def _check_text(value: str, key: str, src: str) -> str:
    bad = (_PROMPT_CONTROL if key in _TEXT_KEYS else _CONTROL).search(value)
    if bad:
        raise ConfigError(f"{src}: {key}: control character {bad.group()!r} not allowed in {value!r}")
    return value


PROMPT_FILE = "file:"
PROMPT_FILE_MAX = 1 << 20  # bytes: a prompt is a recipe's start, not a corpus


def prompt_text(value: str, key: str, src: str) -> str:
    """A prompt as given, or for ``file:PATH`` the text of that file (UTF-8, relative to the current
    directory), checked like a prompt written in the config."""
    if not value.startswith(PROMPT_FILE):
        return _check_text(value, key, src)
    name = value[len(PROMPT_FILE) :].strip()
    _check_text(name, f"{key} (file name)", src)
    if not name:
        raise ConfigError(f"{src}: {key}: 'file:' needs a path, e.g. file:prompts/soup.txt")
    path = Path(name).expanduser().absolute()
    try:
        if not path.is_file():
            raise ConfigError(f"{src}: {key}: {path}: no such file (or not a regular file)")
        if path.stat().st_size > PROMPT_FILE_MAX:
            raise ConfigError(f"{src}: {key}: {path}: larger than {PROMPT_FILE_MAX} bytes: not a prompt")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{src}: {key}: {path}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{src}: {key}: {path}: cannot read: {e.strerror or e}") from None
    if text.startswith(PROMPT_FILE):
        raise ConfigError(f"{src}: {key}: {path}: a prompt file that names another prompt file")
    return _check_text(text, key, src)


def _check_additional(extra: dict | None, key: str, src: str) -> None:
    """sbatch parameters: option names and plain values only (a newline would add #SBATCH lines)."""
    for k, v in (extra or {}).items():
        if not _ADDITIONAL_KEY.fullmatch(k):
            raise ConfigError(f"{src}: {key}.{k}: an sbatch option name holds only a-z, 0-9, - and _")
        if isinstance(v, str):
            _check_text(expand_env(v, f"{key}.{k}", src), f"{key}.{k}", src)
        elif not isinstance(v, (int, float, bool)):
            raise ConfigError(f"{src}: {key}.{k}: expected a string or number, got {type(v).__name__} {v!r}")


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + "|".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _check_value(value: Any, tp: Any, key: str, src: str) -> Any:
    """Coerce/validate one leaf value against its annotation."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(value, inner[0], key, src)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = [str(a) for a in typing.get_args(tp)]
            hint = difflib.get_close_matches(str(value), choices, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{src}: {key}: {value!r} is not {_type_name(tp)}{extra}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{src}: {key}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_value(v, item, f"{key}[{i}]", src) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: {key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{src}: {key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{src}: {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-3 as a string: accept it as a number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{src}: {key}: expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{src}: {key}: expected a finite number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # e.g. run.name: 2024 or generate.checkpoint: 1200
        if not isinstance(value, str):
            raise ConfigError(f"{src}: {key}: expected a string, got {type(value).__name__} {value!r}")
        return _check_text(expand_env(value, key, src), key, src)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module, not user input


def _check_range(value: Any, meta: dict, key: str, src: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{src}: {key}: {value!r} is below the minimum {meta['min']}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{src}: {key}: {value!r} is above the maximum {meta['max']}")
    if meta.get("gt") is not None and not value > meta["gt"]:
        raise ConfigError(f"{src}: {key}: {value!r} must be greater than {meta['gt']}")
    if meta.get("lt") is not None and not value < meta["lt"]:
        raise ConfigError(f"{src}: {key}: {value!r} must be less than {meta['lt']}")


def _build(cls, raw: Any, prefix: str, src: str, base: Any = None):
    """Build dataclass ``cls`` from a mapping over ``base`` (or the defaults), naming the dotted key of
    any problem. A partial section keeps the defaults of the keys it does not name."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        where = prefix or "the top level"
        raise ConfigError(f"{src}: {where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    obj = base if base is not None else cls()
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            hint = difflib.get_close_matches(str(k), list(fields), n=1, cutoff=0.6)
            extra = f" (did you mean {(prefix + '.' if prefix else '') + hint[0]!r}?)" if hint else ""
            known = "" if extra else f" (known: {', '.join(fields)})"
            raise ConfigError(f"{src}: {key}: unknown key{extra}{known}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _build(tp, v, key, src, base=getattr(obj, k))
        else:
            val = _check_value(v, tp, key, src)
            _check_range(val, fields[k].metadata, key, src)
            kwargs[k] = val
    return dataclasses.replace(obj, **kwargs)


def _check_corpus(corpus: Any, src: str) -> Any:
    key = "data.corpus"
    if isinstance(corpus, str):
        return _check_text(expand_env(corpus, key, src), key, src)
    if isinstance(corpus, list):
        if not corpus or not all(isinstance(c, str) for c in corpus):
            raise ConfigError(f"{src}: {key}: a list of corpus paths must be non-empty strings")
        return [_check_text(expand_env(c, f"{key}[{i}]", src), f"{key}[{i}]", src) for i, c in enumerate(corpus)]
    if isinstance(corpus, dict):
        want = {"train", "val", "test"}
        if set(corpus) != want:
            raise ConfigError(
                f"{src}: {key}: a split mapping needs exactly the keys train, val, test "
                f"(got {', '.join(map(str, corpus)) or 'none'})"
            )
        out = {}
        for k in ("train", "val", "test"):
            if not isinstance(corpus[k], str):
                raise ConfigError(f"{src}: {key}.{k}: expected a path, got {corpus[k]!r}")
            out[k] = _check_text(expand_env(corpus[k], f"{key}.{k}", src), f"{key}.{k}", src)
        return out
    raise ConfigError(f"{src}: {key}: expected a path, a list of paths or {{train, val, test}}, got {corpus!r}")


def _check_name(name: str, key: str, src: str) -> None:
    """A run or folder name is one path component inside its parent: never '.', '..' or a separator."""
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ConfigError(f"{src}: {key}: {name!r} may hold only letters, digits and _ . + -")
    if set(name) == {"."}:
        raise ConfigError(f"{src}: {key}: {name!r} would name a folder outside the run's own")


def _abs(p: str) -> str:
    return str(Path(p).expanduser().absolute()) if p else p


def validate(cfg: Config, src: str) -> Config:
    """Cross-field checks and path resolution (relative to the current working directory)."""
    d, m, t, g = cfg.data, cfg.model, cfg.train, cfg.generate
    d.corpus = _check_corpus(d.corpus, src)
    if d.min_count is None:
        d.min_count = 1 if d.tokenizer == "char" else 5
    if len(d.split) != 3 or any(x < 0 for x in d.split) or abs(sum(d.split) - 1.0) > 1e-6 or d.split[0] <= 0:
        raise ConfigError(
            f"{src}: data.split: expected three non-negative fractions (train, val, test) "
            f"summing to 1 with train > 0, got {d.split}"
        )
    if d.document_start is not None:
        try:
            re.compile(d.document_start, re.M)
        except re.error as e:
            raise ConfigError(f"{src}: data.document_start: invalid regex {d.document_start!r}: {e}") from None
    if d.sequences != "windows" and t.loss != "all":
        raise ConfigError(
            f"{src}: train.loss: 'last' scores only the word after a window; data.sequences: {d.sequences} "
            f"needs train.loss: all"
        )
    if m.tie_weights and m.embedding != m.hidden:
        raise ConfigError(
            f"{src}: model.tie_weights: needs model.embedding == model.hidden ({m.embedding} != {m.hidden})"
        )
    if t.bf16 is not None:  # the older key: one spelling in the resolved config
        fits = ("auto", "bf16") if t.bf16 else ("auto", "fp32")
        if t.precision not in fits:
            raise ConfigError(
                f"{src}: train.bf16: {t.bf16} contradicts train.precision: {t.precision}; set only precision"
            )
        t.precision = t.precision if t.bf16 else "fp32"
        t.bf16 = None
    if t.stop_signal not in signal.Signals.__members__:
        raise ConfigError(f"{src}: train.stop_signal: {t.stop_signal!r} is not a signal name like SIGUSR2")
    if t.stop_signal in _UNCATCHABLE:
        raise ConfigError(
            f"{src}: train.stop_signal: {t.stop_signal} cannot be caught, so it cannot stop training "
            f"with a checkpoint: use SIGUSR2 (or another catchable signal)"
        )
    _check_name(cfg.run.name or "x", "run.name", src)
    _check_name(g.name, "generate.name", src)
    for stage in ("defaults", "preprocess", "train", "generate"):
        _check_additional(getattr(cfg.slurm, stage).additional, f"slurm.{stage}.additional", src)
    # resolve paths once, so the saved config is cwd-independent
    cfg.paths.scratch = _abs(cfg.paths.scratch)
    cfg.paths.jobs = _abs(cfg.paths.jobs)
    for key, path in (("paths.scratch", cfg.paths.scratch), ("paths.jobs", cfg.paths.jobs)):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"{src}: {key}: {path} exists and is not a directory")
    if isinstance(d.corpus, str):
        d.corpus = _abs(d.corpus)
    elif isinstance(d.corpus, list):
        d.corpus = [_abs(c) for c in d.corpus]
    elif isinstance(d.corpus, dict):
        d.corpus = {k: _abs(v) for k, v in d.corpus.items()}
    if d.h5_path:
        d.h5_path = _abs(d.h5_path)
    d.vocab_from = _abs(d.vocab_from) if d.vocab_from else None
    t.init_from = _abs(t.init_from) if t.init_from else None
    g.prompt = prompt_text(g.prompt, "generate.prompt", src)
    if g.checkpoint and not g.checkpoint.isdigit():
        g.checkpoint = _abs(g.checkpoint)
    return cfg


# ---------------------------------------------------------------- overrides and loading


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected dotted key=value, e.g. train.max_steps=200")
    key, _, text = item.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"override {item!r}: {key!r} is not a dotted key like train.max_steps")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(value, (dict, list)) and not text.lstrip().startswith(("{", "[")):
        value = text  # "generate.prompt=Title: Soup" means the string, not a mapping
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict:
    src = str(path)
    if not path.exists():
        raise ConfigError(f"{src}: config file not found")
    if path.is_dir():
        raise ConfigError(
            f"{src}: is a directory, expected a YAML config file (or a run directory holding {RESOLVED_NAME})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{src}: cannot read config: {e.__class__.__name__}: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{src}:{where}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return raw


def config_path_of(arg: str | os.PathLike) -> Path:
    """A CONFIG argument may be a YAML file or a run directory holding config.yaml."""
    p = Path(arg)
    if p.is_dir() and (p / RESOLVED_NAME).is_file():
        return p / RESOLVED_NAME
    return p


def from_dict(raw: dict, src: str = "<config>", default_name: str = "run") -> Config:
    raw = dict(raw)
    cfg = _build(Config, {k: v for k, v in raw.items()}, "", src)
    if not cfg.run.name:
        cfg.run.name = default_name
    cfg.source = src
    return validate(cfg, src)


BASE_KEY = "base"


def _merge(base: dict, child: dict, cls: type | None = None) -> dict:
    """``child`` over ``base``: sections (dataclass-typed keys) merge key by key; every other value, lists
    and mappings such as data.corpus or slurm.*.additional included, replaces the base's whole."""
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for k, v in child.items():
        tp = hints.get(k)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, tp)
        else:
            out[k] = v
    return out


def read_composed(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The raw mapping of a config file with its ``base:`` chain merged in (each base relative to the file
    that names it). Each file is checked on its own first, so an unknown key or a wrong type names the file
    that holds it. ``run.name`` is not inherited: a run is its own file's (default: that file's stem)."""
    raw = read_yaml(path)
    here = Path(os.path.abspath(path))
    chain = (*_chain, here)
    if BASE_KEY not in raw:
        _build(Config, raw, "", str(path))
        return raw
    ref = raw.pop(BASE_KEY)
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"{path}: {BASE_KEY}: expected the path of another config file, got {ref!r}")
    _build(Config, raw, "", str(path))
    target = Path(os.path.abspath(here.parent / Path(expand_env(ref, BASE_KEY, str(path))).expanduser()))
    if target in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(target) :], target))
        raise ConfigError(f"{path}: {BASE_KEY}: {ref} makes a cycle ({cycle})")
    if not target.is_file():
        raise ConfigError(f"{path}: {BASE_KEY}: {target} is not a config file")
    base = read_composed(target, chain)
    run = base.get("run")
    if isinstance(run, dict) and "name" in run:
        base["run"] = {k: v for k, v in run.items() if k != "name"}
    return _merge(base, raw)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Load (with its ``base:`` chain), override, expand, validate and resolve a config file. Raises
    ConfigError."""
    if any(item.partition("=")[0].strip() == BASE_KEY for item in overrides or []):
        raise ConfigError(f"override {BASE_KEY}=...: {BASE_KEY} is set in a config file, not on the command line")
    p = config_path_of(path)
    raw = read_composed(p)
    raw = apply_overrides(raw, list(overrides or []))
    stem = p.parent.name if p.name == RESOLVED_NAME and p.parent.name else p.stem
    return from_dict(raw, str(p), default_name=stem)


def save_resolved(cfg: Config) -> Path:
    """Write the resolved config to <run dir>/config.yaml (atomically) and return its path. The stages call
    it only once the run is theirs and its inputs are valid: a refused or failed run leaves it as it was."""
    out = cfg.run_dir / RESOLVED_NAME
    try:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, cfg.to_yaml())
    except OSError as e:
        raise StorageError(f"{out}: cannot write the resolved config: {e.strerror or e}") from None
    return out
