"""The Hugging Face model card (README.md) for a published run: built only from figures, never from data text.

It reads what the run folder holds (:class:`~persona_pipeline.core.runs.RunDir`):
the resolved ``config.yaml`` (LoRA settings) and ``train_summary.json``, which
every trained run has (missing or unreadable is an error), the eval and the
baseline eval ("not evaluated yet" only when that eval folder does not exist),
the GGUF files and their ``check-<QUANT>.json`` ("not checked" when absent); and
the data's provenance shares from the ``stats.json`` that ``make data`` wrote
beside the training data ("not available" when the data was not built by it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.prompt_format import STOP, escape_newlines, format_prompt
from persona_pipeline.core.runs import DATA_STATS, RunDir, baseline_eval_dir, read_json
from persona_pipeline.data.personas import persona_systems
from persona_pipeline.evaluation.report import METRIC_ROWS, change_text
from persona_pipeline.evaluation.results import read_metrics

NOT_YET = "not evaluated yet"


def _run_config(run: RunDir) -> dict[str, Any]:
    """The config the run was trained with (its config.yaml, written by `make train`)."""
    try:
        data = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{run.config} not found", hint="it is written by `make train`; is this a run folder?") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{run.config}: invalid YAML ({exc})", hint="restore the run's config.yaml") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{run.config}: expected a mapping", hint="restore the run's config.yaml")
    return data


def license_id(note: str) -> str:
    """The Hub's license identifier for a free-text license note ("other" when unsure)."""
    n = note.lower()
    for pattern, ident in ((r"apache", "apache-2.0"), (r"llama 3\.1", "llama3.1"), (r"llama 3\b", "llama3"),
                           (r"gemma", "gemma"), (r"\bmit\b", "mit")):
        if re.search(pattern, n):
            return ident
    return "other"


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~", "outputs/"))


def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def metrics_section(cfg: Config, run: RunDir) -> list[str]:
    """Overall and per-persona metrics of the run's eval and of the baseline (un-tuned base model)."""
    tuned = read_metrics(run.eval)
    base = read_metrics(baseline_eval_dir(cfg.outputs_dir, cfg.name, run))
    lines = ["## Evaluation", ""]
    if tuned is None:
        return lines + [f"The fine-tuned model is {NOT_YET} (`make eval`).", ""]
    t_over, b_over = tuned["overall"], (base or {}).get("overall") or {}
    n = (tuned.get("eval_set") or {}).get("n_evaluated", t_over.get("n"))
    gen = tuned.get("generation") or {}
    cont = (tuned.get("eval_set") or {}).get("containment")
    overlap = (f"{cont['references_sharing_run']} of {cont['n']} reference answers share a run of {cont['run_words']} "
               "words with a training answer" if cont else "its overlap with the training answers was not measured")
    lines += [
        f"Held-out eval set of {n} questions ({overlap}), "
        f"{'sampling' if gen.get('do_sample') else 'greedy decoding'}, at most {gen.get('max_new_tokens', '?')} new tokens. "
        "The baseline is the un-tuned base model with the same prompts. Change: fine-tuned minus baseline with its "
        "95 % paired-bootstrap interval over the prompts (`make compare`); ✓ / ✗ only when the interval excludes 0.",
        "",
        "| metric | baseline | fine-tuned | change |",
        "|---|---:|---:|---:|",
    ]
    # "Not compared yet" only when compare never ran (no compare/ folder); a damaged file is an error.
    paired = read_json(run.comparison, written_by="make compare").get("paired") or {} if run.compare.is_dir() else {}
    over = paired.get("overall") or {}
    for key, label, _ in METRIC_ROWS:
        if t_over.get(key) is None and b_over.get(key) is None:
            continue
        change = change_text(over[key]) if key in over else ("no interval" if paired else "not compared yet (`make compare`)")
        lines.append(f"| {label} | {_num(b_over.get(key)) if base else NOT_YET} | {_num(t_over.get(key))} | {change} |")
    origin = paired.get("per_origin") or {}
    if origin:
        keys = [(k, label) for k, label, _ in METRIC_ROWS if k in ("rougeL", "semantic_similarity", "persona_match")]
        lines += ["", "Change by origin of the reference (real transcript quotes vs generated):", "",
                  "| origin | n | " + " | ".join(label for _, label in keys) + " |", "|---|---:|" + "---:|" * len(keys)]
        for name, m in origin.items():
            n_slice = next(iter(m.values()))["n"] if m else 0
            lines.append(f"| {name} | {n_slice} | " + " | ".join(change_text(m[k]) if k in m else "n/a" for k, _ in keys) + " |")
    per = tuned.get("per_persona") or {}
    if per:
        keys = [(k, label) for k, label, _ in METRIC_ROWS if k in ("rougeL", "bleu", "persona_match", "blend_rate")]
        lines += ["", "Per persona (fine-tuned):", "", "| persona | n | " + " | ".join(label for _, label in keys) + " |",
                  "|---|---:|" + "---:|" * len(keys)]
        for name, g in per.items():
            lines.append(f"| {name} | {_num(g.get('n'))} | " + " | ".join(_num(g.get(k)) for k, _ in keys) + " |")
    return lines + [""]


def _provenance(cfg: Config, run_config: dict[str, Any]) -> str:
    """Shares of real quotes / quote-derived / invented records, from ``stats.json`` beside the training data."""
    train = (run_config.get("data") or {}).get("train") or cfg.data.train
    path = cfg.resolve(train).parent / DATA_STATS
    if not path.is_file():  # data supplied by hand, not built by `make data`
        return f"not available (no {DATA_STATS} beside the training data; `make data` writes it)"
    share = read_json(path, written_by="make data").get("origin_share")
    if not isinstance(share, dict) or not share:
        return f"not available ({path} has no origin shares; re-run `make data`)"
    return (f"{share.get('quote', 0):.1%} real quotes from the documentary transcripts, "
            f"{share.get('quote_derived', 0):.1%} derived from quotes (rephrased quotes, answers from transcript-sourced facts), "
            f"{share.get('invented', 0):.1%} invented for this project (facts and deflections without a transcript source)")


def _bash_quote(text: str) -> str:
    """$'...' quoting so that the prompt's newlines survive the shell."""
    return "$'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _gguf_section(run: RunDir, repo_id: str, subfolder: str, gguf_files: list[Path], example: str) -> list[str]:
    if not gguf_files:
        return []
    lines = ["## GGUF (llama.cpp, Ollama)", "", "| file | size | check against transformers |", "|---|---:|---|"]
    for f in gguf_files:
        quant = f.stem.rsplit("-", 1)[-1]
        check = run.gguf_check(quant)
        chk = read_json(check, written_by="make gguf-check") if check.is_file() else None
        if not chk:
            verdict = "not checked"
        elif chk.get("mode") == "llama.cpp":
            ties = chk.get("greedy_near_tie_divergences") or 0
            verdict = (f"{chk['status']}: greedy output equal on {chk['greedy_equal']}/{chk['prompts']} prompts"
                       + (f" (+{ties} parted at a near-tie)" if ties else "") + ", "
                       f"top-1 agreement {chk['top1_agreement']:.3f}, max logit diff {chk['max_logit_diff']:.4f}")
        else:
            verdict = f"{chk.get('status')}: tensors only, max relative error {chk.get('max_rel_rms_error', 0):.2e}"
        lines.append(f"| `gguf/{f.name}` | {f.stat().st_size / 1e6:.1f} MB | {verdict} |")
    first = gguf_files[0].name
    lines += [
        "",
        "```bash",
        f"huggingface-cli download {repo_id} --include '{subfolder}/gguf/*' --local-dir .",
        f"llama-completion -m {subfolder}/gguf/{first} -no-cnv -n 128 --temp 0.7 \\",
        f"  -p {_bash_quote(example)}",
        f"cd {subfolder}/gguf && ollama create persona -f Modelfile && ollama run persona",
        "```",
        "",
    ]
    return lines


def build_model_card(
    cfg: Config, run_dir: RunDir, *, repo_id: str, subfolder: str, artifact: str, gguf_files: list[Path]
) -> str:
    rc = _run_config(run_dir)
    model = rc.get("model") or {}
    base_name = str(model.get("name_or_path") or cfg.model.name_or_path)
    note = str(model.get("license_note") or cfg.model.license_note or "see the base model's license")
    lora = rc.get("lora") or {}
    quant = rc.get("quantization") or {}
    summary = read_json(run_dir.train_summary, written_by="make train")
    personas = persona_systems(cfg)
    first, system = next(iter(personas.items()))
    example = format_prompt(first, system, "What should school be for?")

    front = {"license": license_id(note), "library_name": "peft" if artifact == "adapter" else "transformers",
             "tags": ["persona", "lora", "fine-tuned", *(["gguf"] if gguf_files else [])]}
    if _is_hub_id(base_name):
        front["base_model"] = base_name
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {cfg.name}: documentary persona model ({subfolder})", "",
             "Fine-tuned to answer *as* one of the people of a documentary, named in the prompt: "
             + ", ".join(personas) + ". Built with persona-pipeline.", "",
             "## Base model and license", "",
             f"- base model: `{base_name}`" + ("" if _is_hub_id(base_name) else " (built locally by the pipeline)"),
             f"- license: {note}. This model is a derivative of the base model and is subject to its license.",
             "- published artifact: " + ("the LoRA adapter only (load it on top of the base model)" if artifact == "adapter"
                                         else "the full model with the LoRA adapter merged in"),
             "", "## Training", "",
             f"- LoRA: r={lora.get('r')}, alpha={lora.get('lora_alpha')}, dropout={lora.get('lora_dropout')}, "
             f"target modules {', '.join(lora.get('target_modules') or [])}",
             f"- QLoRA (4-bit NF4): {'yes' if quant.get('load_in_4bit') else 'no'}"]
    samples = summary.get("samples") or {}
    lines += [
        f"- epochs: {_num(summary.get('epochs'))}, steps: {_num(summary.get('global_step'))}, "
        f"tokens seen: {_num(summary.get('tokens_seen'))}, trainable parameters: {_num(summary.get('trainable_parameters'))}",
        f"- eval loss: {_num(summary.get('base_eval_loss'))} before training, {_num(summary.get('final_eval_loss'))} after",
        f"- data: {_num(samples.get('train'))} training and {_num(samples.get('eval'))} held-out samples "
        "(question/answer pairs in each persona's voice; the data itself is private and not published)",
        f"- data provenance: {_provenance(cfg, rc)}",
    ]
    lines += [""] + metrics_section(cfg, run_dir)
    load = (f'from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", subfolder="{subfolder}")\n'
            f'tok = AutoTokenizer.from_pretrained("{repo_id}", subfolder="{subfolder}")')
    if artifact == "adapter":
        load = (f'from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
                f'base = AutoModelForCausalLM.from_pretrained("{base_name}")\n'
                f'model = PeftModel.from_pretrained(base, "{repo_id}", subfolder="{subfolder}")\n'
                f'tok = AutoTokenizer.from_pretrained("{repo_id}", subfolder="{subfolder}")')
    lines += [
        "## Usage", "",
        f"The prompt names the persona in a system line and ends with the persona's name; stop at the next `{escape_newlines(STOP)}`.",
        "", "```python", load,
        f"prompt = {example!r}",
        'ids = tok(prompt, return_tensors="pt")',
        "out = model.generate(**ids, max_new_tokens=128, do_sample=True, temperature=0.7, top_p=0.9,",
        f"                     stop_strings=[{json.dumps(STOP)}], tokenizer=tok)",
        'print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```", "",
    ]
    lines += _gguf_section(run_dir, repo_id, subfolder, gguf_files, example)
    lines += ["## Limitations", "",
              "The model imitates how these people speak about their own work; it can state things they never said "
              "(see the data provenance above: most facts in the data were written for this project). "
              "Do not present its answers as quotes.", ""]
    return "\n".join(lines)
