"""Loading base models and tokenizers: local folders or Hub ids, dtype from the hardware, QLoRA.

Everything that loads a model goes through here so that the offline / missing
model / no-CUDA errors are the same for train, merge, eval and export.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import torch

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
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(loc, "config.json", revision=cfg.model.revision)
    if isinstance(cached, str):
        return loc
    import os

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise PipelineError(
            f"model '{loc}' is not cached locally and HF_HUB_OFFLINE=1",
            hint=f"on a machine with network: `huggingface-cli download {loc}` (gated models need "
            "`huggingface-cli login` and an accepted license), or set model.name_or_path to a local folder",
        )
    return loc


def resolve_dtype(cfg: Config) -> "torch.dtype":
    """bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU; or what the config says."""
    import torch

    if cfg.model.dtype != "auto":
        return getattr(torch, cfg.model.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def device() -> "torch.device":
    import torch

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
    from transformers import AutoTokenizer

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
    import importlib.util

    import torch

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
    from transformers import BitsAndBytesConfig

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
    from transformers import AutoModelForCausalLM

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
        from accelerate import PartialState

        # One GPU per process under torchrun / accelerate.
        kwargs["device_map"] = {"": PartialState().local_process_index}
    try:
        model = AutoModelForCausalLM.from_pretrained(loc, **kwargs)
    except OSError as exc:
        raise _hub_error(loc, exc) from None
    log.info("loaded %s (%s, %.1fM parameters)", loc, kwargs["dtype"], model.num_parameters() / 1e6)
    return model
