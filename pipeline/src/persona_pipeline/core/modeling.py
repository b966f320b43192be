"""Loading models and tokenizers: local folders or Hub ids, dtype from the hardware, QLoRA, LoRA adapters.

Everything that loads a model goes through here so that the offline / missing
model / no-CUDA errors are the same for train, merge, eval and export.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
from accelerate import PartialState
from huggingface_hub import try_to_load_from_cache
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.runs import RunDir

log = logging.getLogger(__name__)


def model_location(cfg: Config, name_or_path: str | None = None) -> str:
    """A local folder (resolved against the pipeline root) or the Hub id unchanged."""
    name = name_or_path or cfg.model.name_or_path
    local = cfg.resolve(name)
    if local.exists() or name.startswith((".", "/", "~")) or name.startswith("outputs/"):
        return str(local)
    return name


def ensure_available(cfg: Config, name_or_path: str | None = None) -> str:
    """Fail early, with the fix, when the model is neither a local folder nor in the Hub cache."""
    loc = model_location(cfg, name_or_path)
    path = Path(loc)
    if path.is_absolute():
        if not (path / "config.json").is_file():
            tiny = "tiny" in path.name
            raise PipelineError(
                f"base model folder not found or incomplete: {path} (no config.json)",
                hint="build it with `make base-model`" if tiny else "check model.name_or_path in the config",
            )
        return loc
    cached = try_to_load_from_cache(loc, "config.json", revision=cfg.model.revision)
    if isinstance(cached, str):
        return loc
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise PipelineError(
            f"model '{loc}' is not cached locally and HF_HUB_OFFLINE=1",
            hint=f"on a machine with network: `huggingface-cli download {loc}` (gated models need "
            "`huggingface-cli login` and an accepted license), or set model.name_or_path to a local folder",
        )
    return loc


def resolve_dtype(cfg: Config) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU; or what the config says."""
    if cfg.model.dtype != "auto":
        return getattr(torch, cfg.model.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _hub_error(loc: str, exc: Exception) -> PipelineError:
    return PipelineError(
        f"could not load '{loc}': {type(exc).__name__}: {exc}".splitlines()[0],
        hint=f"the model is not cached locally and the Hub is unreachable; on a machine with network run "
        f"`huggingface-cli download {loc}` (gated models need `huggingface-cli login`), "
        "or point model.name_or_path at a local folder",
    )


def load_tokenizer(cfg: Config, name_or_path: str | None = None):
    """The tokenizer, with a pad token (eos if the model has none)."""
    loc = ensure_available(cfg, name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(
            loc, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code
        )
    except OSError as exc:
        raise _hub_error(loc, exc) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(cfg: Config):
    """BitsAndBytesConfig for QLoRA, or None. Fails clearly without CUDA or bitsandbytes."""
    q = cfg.quantization
    if not q.load_in_4bit:
        return None
    if not torch.cuda.is_available():
        raise PipelineError(
            "quantization.load_in_4bit (QLoRA) needs a CUDA GPU; none is available on this machine",
            hint="set quantization.load_in_4bit=false to train plain LoRA, or run on a GPU machine",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise PipelineError(
            "QLoRA needs bitsandbytes, which is not installed",
            hint="pip install -e '.[gpu]' (inside pipeline/.venv)",
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
    )


def load_causal_lm(cfg: Config, name_or_path: str | None = None, *, quantize: bool = True):
    """A causal LM from the base model (or another folder), in the configured dtype.

    With ``quantize`` and ``quantization.load_in_4bit`` the model is loaded in 4-bit NF4 on the GPU.
    """
    loc = ensure_available(cfg, name_or_path)
    qconf = quantization_config(cfg) if quantize else None
    kwargs = dict(
        dtype=resolve_dtype(cfg),
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    if qconf is not None:
        kwargs["quantization_config"] = qconf
        # One GPU per process under torchrun / accelerate.
        kwargs["device_map"] = {"": PartialState().local_process_index}
    try:
        model = AutoModelForCausalLM.from_pretrained(loc, **kwargs)
    except OSError as exc:
        raise _hub_error(loc, exc) from None
    log.info("loaded %s (%s, %.1fM parameters)", loc, kwargs["dtype"], model.num_parameters() / 1e6)
    return model


def build_peft_model(cfg: Config):
    """Base model (4-bit for QLoRA) wrapped with the LoRA adapter described by ``cfg.lora``, for training."""
    model = load_causal_lm(cfg)
    if cfg.quantization.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    lc = cfg.lora
    peft_config = LoraConfig(
        r=lc.r,
        lora_alpha=lc.lora_alpha,
        lora_dropout=lc.lora_dropout,
        target_modules=list(lc.target_modules),
        bias=lc.bias,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, peft_config)
    model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
    return model


def adapter_tokenizer(cfg: Config, adapter: Path):
    """The tokenizer saved with the adapter (what training used), else the base model's."""
    if not (adapter / "tokenizer_config.json").is_file():
        return load_tokenizer(cfg)
    tok = AutoTokenizer.from_pretrained(str(adapter), trust_remote_code=cfg.model.trust_remote_code)
    if tok.pad_token is None:  # as load_tokenizer does for the base model
        tok.pad_token = tok.eos_token
    return tok


def load_adapter_model(cfg: Config, run: RunDir, *, quantize: bool = True):
    """(PeftModel on the base model, tokenizer) for the run's adapter, on :func:`device`, in eval mode."""
    adapter = run.require_adapter()
    base = ensure_available(cfg)
    recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if recorded and model_location(cfg, recorded) != base:
        log.warning("the adapter was trained on %s; merging into %s (model.name_or_path)", recorded, base)
    model = load_causal_lm(cfg, quantize=quantize)
    if not getattr(model, "is_quantized", False) and getattr(model, "hf_device_map", None) is None:
        model.to(device())
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    model.eval()
    return model, adapter_tokenizer(cfg, adapter)
