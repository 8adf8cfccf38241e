"""The configuration's schema: typed sections with their defaults, ranges and docs, and the corpus settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


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
    # preprocessing in N tasks, each reading one slice of the inputs (a Slurm job array under launch, processes
    # here); the corpus is the same, bit for bit, for any N, so this is not one of the CORPUS_KEYS.
    # 0: automatic, one task per shard_mb MiB of input text (one for any corpus smaller than that)
    shards: int = _f(0, min=0)
    # automatic sharding's slice of input text, MiB (a task's peak memory is about twice its slice)
    shard_mb: int = _f(1024, min=1)


@dataclass
class ModelConfig:
    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    hidden: int = _f(256, min=1)
    layers: int = _f(1, min=1)
    embedding: int = _f(256, min=1)
    dropout: float = _f(0.0, min=0.0, lt=1.0)
    tie_weights: bool = False  # needs embedding == hidden
    # positions of the document so far that a pointer may copy a word from (hpcrnn/model/pointer.py:
    # pointer sentinel mixture); 0: no pointer, the plain recurrent LM
    pointer: int = _f(0, min=0)
    # the width of the pointer's keys and queries: 0, the outputs themselves are the keys (model.hidden
    # wide); d > 0, a learned projection of the outputs to d dimensions, what the pointer's memory holds
    # and scores against (its arithmetic and memory scale with this width)
    pointer_key: int = _f(0, min=0)
    # the output layer: a softmax over the whole vocabulary, or an adaptive softmax (hpcrnn/model/adaptive.py:
    # the frequent words in a head, the rarer ones in clusters behind it; for vocabularies of 100k words)
    softmax: Literal["full", "adaptive"] = "full"
    # adaptive: the word ids where the clusters start, ascending; []: automatic (2000, 10000, 50000: those
    # below the vocabulary's size)
    cutoffs: list[int] = _f(factory=list)


@dataclass
class WandbConfig:
    """train.wandb: the run's records also in Weights & Biases (rank 0); ``pip install 'hpcrnn[wandb]'``."""

    project: str = ""  # the W&B project; "": off
    # offline: files under <run dir>/wandb/ (no network; `wandb sync` them later); online: streamed
    mode: Literal["offline", "online", "disabled"] = "offline"
    entity: str | None = None  # the W&B user or team; default: the account's own


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
    wandb: WandbConfig = _f(factory=WandbConfig)


@dataclass
class GenerateConfig:
    name: str = "default"
    # a step number, a checkpoint dir, a model file, or by name: "last" (the newest complete, the default)
    # or "best" (the lowest validation loss); a name wins over a file so named (write ./best for the file)
    checkpoint: str | None = None
    # recipes to write; with generate.prompts, recipes per prompt. Default: 100, or 1 per prompt
    num_recipes: int | None = _f(None, min=1)
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
    # a file of prompts in the corpus layout, each starting with "Title:" (a title alone, a title and
    # ingredient lines, or any beginning of a recipe): num_recipes recipes for each
    prompts: str | None = None
    # none: each prompt fed as written; ingredients: each prompt is a whole recipe, fed up to the end of its
    # ingredient block, and its own instructions are the reference (the real figures in summary.json)
    prompts_cut: Literal["none", "ingredients"] = "none"
    # all: the ingredient lines a text prompt ends with (at a line end) are all the recipe's ingredients,
    # and the recipe goes on with its instructions (recipe tokenizer; hpcrnn/generate/constrain.py);
    # more: the model may list more ingredients first
    prompt_ingredients: Literal["all", "more"] = "all"
    shards: int = _f(1, min=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quality_sample: int = _f(200, min=0)  # held-out test recipes scored for comparison
    # the matrix products (most of a step's work) in bf16 where the hardware multiplies bf16 natively
    # (CUDA, CPUs with AMX or AVX512-BF16; bf16 elsewhere runs fp32 and says so), as autocast does; state
    # and sampling stay fp32. auto resolves once per output folder (generated/<name>/plan.json)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # in a recipe's instructions: added to the log-probability of the words naming a listed ingredient of
    # this recipe not yet named there; unlisted_bias: subtracted from that of the ingredient words no
    # listed line names (hpcrnn/generate/constrain.py). 0: off
    listed_bias: float = _f(0.0, min=0.0)
    unlisted_bias: float = _f(0.0, min=0.0)


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


# The data.* settings a built corpus depends on, by value: the attributes corpus.h5 records and hashes into
# its fingerprint (hpcrnn/data/build.py). The corpus also depends on two settings compared by content, not
# by value, so they are not here: data.corpus (the inputs themselves are fingerprinted) and data.vocab_from
# (the hash of that vocabulary, which only reading it gives).
CORPUS_KEYS = (
    "tokenizer",
    "min_count",
    "rare",
    "repair",
    "format",
    "document_start",
    "window",
    "stride",
    "split",
    "seed",
)


def corpus_settings(cfg: Config) -> dict:
    """The ``CORPUS_KEYS`` of a validated config's ``data`` section, in that order, normalised as corpus.h5
    records them: plain int/bool/float values, ``document_start`` "" for none, ``stride`` the window when
    unset. From the same inputs, configs whose settings (and data.vocab_from vocabulary) are equal build the
    same corpus. Not data.vocab_from's hash: the caller adds it (it reads the vocabulary)."""
    d = cfg.data  # the keys below are CORPUS_KEYS, in its order: keep the two in step
    return {
        "tokenizer": d.tokenizer,
        "min_count": int(d.min_count),
        "rare": d.rare,
        "repair": bool(d.repair),
        "format": d.format,
        "document_start": d.document_start or "",
        "window": int(d.window),
        "stride": int(d.stride or d.window),
        "split": [float(x) for x in d.split],
        "seed": int(d.seed),
    }
