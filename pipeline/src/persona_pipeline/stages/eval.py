"""``make eval``: generate answers for the held-out eval set and score them.

The model is a run's adapter (``eval.source=run``, merged in memory for
speed), the run's ``merged/`` folder (``merged``) or the un-tuned base model
(``base``, the baseline). Scores: ROUGE-1/2/L and BLEU, semantic similarity,
persona fidelity and blending, lengths and empty / runaway rates — overall and
per persona (:mod:`persona_pipeline.evaluation.scoring`). Output folder:
``run/eval/`` (run, merged), ``run/eval_baseline/`` (base; ``outputs/baselines/<config name>/``
when there is no run yet), with ``metrics.json``, ``predictions.jsonl[.enc]`` and
``report.md`` (:mod:`persona_pipeline.evaluation.results`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from typing import Any

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import DataError
from persona_pipeline.core.modeling import device
from persona_pipeline.core.prompt_format import render_prompt
from persona_pipeline.core.records import is_encrypted, persona_of, read_dataset, read_eval_set
from persona_pipeline.core.runs import BASELINES_DIR, LATEST, EvalDir, RunDir
from persona_pipeline.data.personas import load_personas
from persona_pipeline.data.split import RUN_WORDS, containment
from persona_pipeline.evaluation.embeddings import load_embedder
from persona_pipeline.evaluation.generation import GenerationSettings, generate, load_eval_model, set_eval_threads
from persona_pipeline.evaluation.report import COLUMNS, fmt
from persona_pipeline.evaluation.results import prompts_digest, select_samples, write_eval
from persona_pipeline.evaluation.scoring import score

log = logging.getLogger(__name__)


def output_dir(cfg: Config, run: str | None) -> tuple[RunDir | None, EvalDir]:
    """(run or None, eval folder to write) for ``cfg.eval.source`` and the ``--run`` argument."""
    if cfg.eval.source == "base" and run in (None, LATEST) and not (cfg.runs_dir / LATEST).exists():
        return None, EvalDir(cfg.outputs_dir / BASELINES_DIR / cfg.name)
    run_dir = RunDir.resolve(cfg.runs_dir, run)
    return run_dir, run_dir.eval_baseline if cfg.eval.source == "base" else run_dir.eval


def _containment(train_records: list[dict], samples: list[dict]) -> dict[str, Any]:
    """How many evaluated references share a run of 8 words with a training answer (what "held out" means here)."""
    found = containment([r["completion"] for r in train_records], [s["reference"] for s in samples])
    return {"run_words": RUN_WORDS, "references_sharing_run": sum(c.share > 0 for c in found), "n": len(found)}


def evaluate(cfg: Config, run_dir: RunDir | None, out: EvalDir) -> dict:
    """Evaluate per ``cfg.eval`` and write the eval folder ``out``; returns the metrics (also in ``metrics.json``)."""
    eval_path = cfg.resolve(cfg.data.eval)
    train_path = cfg.resolve(cfg.data.train)
    # Everything that can fail on user input happens before the model loads and before anything is written.
    records, eval_sha = read_eval_set(cfg)
    chosen = select_samples(records, cfg.eval.personas, cfg.eval.max_samples, str(eval_path))
    train_records, train_sha = read_dataset(cfg, train_path)
    personas = load_personas(cfg)
    persona_dir = cfg.resolve(cfg.generate.personas_dir)
    unknown = [n for n in cfg.eval.personas if n not in personas]
    if unknown:
        raise DataError(f"eval.personas names {', '.join(unknown)}, which has no file in {persona_dir}",
                        hint="fix eval.personas or add the persona file")
    # Line numbers only: a name that no persona file defines is record content, not configuration.
    strays = [str(r["meta"].get("line")) for r in records if persona_of(r) not in personas]
    if strays:
        raise DataError(
            f"{eval_path}: {len(strays)} record(s) name a persona that has no file in {persona_dir} "
            f"(lines {', '.join(strays[:10])}{', ...' if len(strays) > 10 else ''})",
            hint=f"known personas: {', '.join(sorted(personas))}; add the persona file or regenerate the data with `make data`",
        )
    embedder, emb_status = load_embedder(cfg, str(device()))
    if not emb_status.available:
        print(f"notice: {emb_status.notice}")

    t0 = time.perf_counter()
    model, tokenizer, model_desc = load_eval_model(cfg, run_dir)
    t1 = time.perf_counter()
    settings = GenerationSettings.from_config(cfg)
    prompts = [render_prompt(r["prompt"], cfg.model.prompt_format, tokenizer) for r in chosen]
    gens = generate(model, tokenizer, prompts, settings,
                    batch_size=cfg.eval.batch_size, desc=f"eval {cfg.eval.source}")
    t2 = time.perf_counter()
    del model

    samples = [
        {
            "index": i,
            "persona": persona_of(r),
            "kind": r.get("meta", {}).get("kind"),
            "origin": r.get("meta", {}).get("origin"),
            "line": r.get("meta", {}).get("line"),
            "prompt": r["prompt"],
            "reference": r["completion"].strip(),
            "answer": g.text,
            "_new_tokens": g.new_tokens,
            "_stop": g.stop,
        }
        for i, (r, g) in enumerate(zip(chosen, gens, strict=True))
    ]
    groups, fidelity = score(cfg, samples, train_records, embedder)
    t3 = time.perf_counter()
    new_tokens = sum(g.new_tokens for g in gens)
    encrypted = is_encrypted(eval_path)
    metrics = {
        "config": cfg.name,
        "config_file": str(cfg.source_file) if cfg.source_file else None,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "model": model_desc,
        "run_dir": str(run_dir.path) if run_dir else None,
        "eval_set": {"path": str(eval_path), "sha256": eval_sha, "n_records": len(records), "n_evaluated": len(chosen),
                     "prompts_sha256": prompts_digest([(s["prompt"], s["reference"]) for s in samples]),
                     "containment": _containment(train_records, samples)},
        "train_set": {"path": str(train_path), "sha256": train_sha, "n_records": len(train_records)},
        "generation": {**settings.to_dict(), "batch_size": cfg.eval.batch_size, "prompt_format": cfg.model.prompt_format},
        **groups,
        "fidelity": fidelity,
        "embeddings": emb_status.to_dict(),
        "timing": {
            "load_s": t1 - t0, "generate_s": t2 - t1, "score_s": t3 - t2,
            "answers_per_s": len(chosen) / max(t2 - t1, 1e-9), "new_tokens_per_s": new_tokens / max(t2 - t1, 1e-9),
            "device": str(device()),
        },
        "predictions": out.predictions_name(encrypted),
    }
    write_eval(cfg, out, metrics, samples, encrypted)
    log.info("eval written to %s", out.path)
    return metrics


def run(cfg: Config, *, run: str = "latest") -> int:
    set_eval_threads(cfg)
    run_dir, out = output_dir(cfg, run)
    m = evaluate(cfg, run_dir, out)
    o = m["overall"]
    print(f"eval ({m['model']['source']}) on {o['n']} samples -> {out.path}")
    print("  " + ", ".join(f"{label} {fmt(o.get(k), pct)}" for k, label, pct in COLUMNS[1:9]))
    print(f"  persona classifier accuracy on references: {fmt(m['fidelity']['tfidf']['accuracy'], True)}")
    return 0
