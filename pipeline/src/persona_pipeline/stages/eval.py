"""``make eval``: generate answers for the held-out eval set and score them.

The model is a run's adapter (``eval.source=run``, merged in memory for
speed), the run's ``merged/`` folder (``merged``) or the un-tuned base model
(``base``, the baseline). Scores: ROUGE-1/2/L and BLEU (:mod:`.metrics`),
semantic similarity (:mod:`.embeddings`), persona fidelity and blending
(:mod:`.fidelity`), lengths and empty / runaway rates — overall and per
persona. Output folder: ``run/eval/`` (run, merged), ``run/eval_baseline/``
(base; ``outputs/baselines/<config name>/`` when there is no run yet), with
``metrics.json``, ``predictions.jsonl[.enc]`` and ``report.md``.

Predictions hold the eval prompts and references, so they are encrypted with
the data key when the eval set is (``predictions.jsonl.enc``; read them with
``make decrypt INPUT=...``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import DataError, PipelineError
from persona_pipeline.core.fsutil import atomic_dir
from persona_pipeline.data.split import RUN_WORDS, containment
from persona_pipeline.evaluation.intervals import intervals, slices

log = logging.getLogger(__name__)

METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
REPORT = "report.md"
EVAL_DIR = {"run": "eval", "merged": "eval", "base": "eval_baseline"}
CONTRASTIVE = "contrastive"


# --------------------------------------------------------------------------- data


def _key_for(cfg: Config, path: Path) -> bytes | None:
    from persona_pipeline.stages.keys import data_key
    from persona_pipeline.core.records import is_encrypted

    return data_key(cfg) if is_encrypted(path) else None


def read_dataset(cfg: Config, path: Path) -> tuple[list[dict], str]:
    """Records of a (possibly encrypted) JSONL file and the sha256 of its plaintext bytes."""
    from persona_pipeline.core.crypto import decrypt_file
    from persona_pipeline.core.records import parse_jsonl

    key = _key_for(cfg, path)
    if key is not None:
        data = decrypt_file(path, key)
    elif path.is_file():
        data = path.read_bytes()
    else:
        raise DataError(f"dataset not found: {path}", hint="run `make data` first, or fix data.eval / data.train")
    return parse_jsonl(data, str(path)), hashlib.sha256(data).hexdigest()


def read_eval_set(cfg: Config) -> tuple[list[dict], str]:
    return read_dataset(cfg, cfg.resolve(cfg.data.eval))


def persona_of(record: dict) -> str | None:
    """``meta.persona``, else the name in the prompt's last ``\\n\\n<Name>:`` line."""
    name = record.get("meta", {}).get("persona")
    if name:
        return str(name)
    tail = record["prompt"].rsplit("\n\n", 1)[-1].strip()
    return tail[:-1] if tail.endswith(":") and tail != "Human:" else None


def select_samples(records: list[dict], personas: list[str], max_samples: int | None, source: str) -> list[dict]:
    """Records of the configured personas (all of them present), at most ``max_samples`` spread evenly over personas."""
    names = personas or sorted({p for r in records if (p := persona_of(r))})
    by: dict[str, list[int]] = {n: [] for n in names}
    for i, r in enumerate(records):
        if persona_of(r) in by:
            by[persona_of(r)].append(i)
    missing = [n for n, idx in by.items() if not idx]
    if missing:
        raise DataError(
            f"{source}: no eval samples for persona(s) {', '.join(missing)} named in eval.personas",
            hint="regenerate the data with `make data`, or set eval.personas to the personas the eval set covers",
        )
    chosen = sorted(i for idx in by.values() for i in idx)
    if max_samples is not None and max_samples < len(chosen):
        # Round-robin over personas so that a small eval still covers each of them.
        queues, chosen = [list(v) for v in by.values()], []
        while len(chosen) < max_samples:
            for q in queues:
                if q and len(chosen) < max_samples:
                    chosen.append(q.pop(0))
        chosen.sort()
    return [records[i] for i in chosen]


def prompts_digest(pairs: list[tuple[str, str]]) -> str:
    """sha256 of the (prompt, reference) pairs in order: what `compare` checks predictions against."""
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- model and folders


def output_dir(cfg: Config, run: str | None) -> tuple[Path | None, Path]:
    """(run folder or None, eval output folder) for ``cfg.eval.source`` and the ``--run`` argument."""
    from persona_pipeline.core.runs import LATEST, resolve_run

    source = cfg.eval.source
    if source == "base" and (run in (None, LATEST)) and not (cfg.runs_dir / LATEST).exists():
        return None, cfg.outputs_dir / "baselines" / cfg.name
    run_dir = resolve_run(cfg.runs_dir, run)
    return run_dir, run_dir / EVAL_DIR[source]


def load_eval_model(cfg: Config, run_dir: Path | None) -> tuple[Any, Any, dict]:
    """(model, tokenizer, description) for ``cfg.eval.source``, in eval mode on the available device."""
    from persona_pipeline.stages.merge import load_adapter_model, merged_dir
    from persona_pipeline.core.modeling import device, load_causal_lm, load_tokenizer, model_location

    source = cfg.eval.source
    if source == "base":
        model = load_causal_lm(cfg)
        tok = load_tokenizer(cfg)
        desc = {"source": source, "model": model_location(cfg)}
    elif source == "merged":
        if run_dir is None:
            raise PipelineError("eval.source=merged needs a run", hint="pass RUN=<run folder>")
        folder = merged_dir(run_dir)
        model = load_causal_lm(cfg, str(folder), quantize=False)
        tok = load_tokenizer(cfg, str(folder))
        desc = {"source": source, "model": str(folder)}
    else:
        if run_dir is None:
            raise PipelineError("eval.source=run needs a run", hint="pass RUN=<run folder>")
        model, tok = load_adapter_model(cfg, run_dir)
        desc = {"source": source, "model": model_location(cfg), "adapter": str(run_dir / "adapter")}
        if not getattr(model, "is_quantized", False) and not cfg.quantization.load_in_4bit:
            # Same logits (see `make merge`), no per-layer LoRA overhead during generation.
            model = model.merge_and_unload()
            desc["merged_in_memory"] = True
    if not getattr(model, "is_quantized", False) and getattr(model, "hf_device_map", None) is None:
        model.to(device())
    model.eval()
    return model, tok, desc


# --------------------------------------------------------------------------- scoring


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _aggregate(samples: list[dict]) -> dict[str, Any]:
    from persona_pipeline.evaluation.metrics import corpus_bleu, length_stats

    n = len(samples)
    sc = [s["scores"] for s in samples]
    contrastive = [s for s in samples if s["kind"] == CONTRASTIVE]
    out: dict[str, Any] = {"n": n, "n_contrastive": len(contrastive)}
    for k in ("rouge1", "rouge2", "rougeL"):
        out[k] = _mean([x[k] for x in sc])
    out["bleu"] = corpus_bleu([s["answer"] for s in samples], [s["reference"] for s in samples])
    out["semantic_similarity"] = _mean([x["semantic_similarity"] for x in sc])
    out["persona_match"] = _mean([float(x["persona_match"]) for x in sc])
    out["persona_match_embed"] = _mean([None if x["persona_match_embed"] is None else float(x["persona_match_embed"]) for x in sc])
    out["blend_rate"] = _mean([float(x["blend"]) for x in sc])
    out["blend_rate_contrastive"] = _mean([float(s["scores"]["blend"]) for s in contrastive])
    out.update(length_stats([s["answer"] for s in samples], [x["stop"] == "max_tokens" for x in sc]))
    out["ci"] = intervals(samples)
    return out


def score(cfg: Config, samples: list[dict], train_records: list[dict], embedder) -> tuple[dict, dict]:
    """Fill ``samples[i]["scores"]`` and return (metrics by group, fidelity description)."""
    from tqdm.auto import tqdm

    from persona_pipeline.evaluation.fidelity import BlendDetector, accuracy_report, embedding_classifier, tfidf_classifier
    from persona_pipeline.evaluation.metrics import rouge_per_sample, sentence_bleu
    from persona_pipeline.data.personas import load_personas

    names = cfg.eval.personas or sorted({s["persona"] for s in samples})
    answers = [s["answer"] for s in samples]
    refs = [s["reference"] for s in samples]
    labels = [s["persona"] for s in samples]

    rouge = rouge_per_sample(answers, refs)
    train_texts = [r["completion"].strip() for r in train_records]
    train_labels = [persona_of(r) or "" for r in train_records]
    try:
        clf = tfidf_classifier(train_texts, train_labels, names)
    except ValueError as exc:
        raise DataError(f"{cfg.resolve(cfg.data.train)}: {exc}; persona fidelity is fitted on the training answers",
                        hint="regenerate the data with `make data`") from None
    fidelity = {"tfidf": accuracy_report(clf, refs, labels), "embedding": None}
    predicted, _ = clf.predict(answers)

    similarity: list[float | None] = [None] * len(samples)
    predicted_embed: list[str | None] = [None] * len(samples)
    if embedder is not None:
        vec_a = embedder.encode(answers)
        vec_r = embedder.encode(refs)
        # An empty answer has nothing in common with its reference: 0, not the embedding of "".
        similarity = [float(a @ r) if ans.strip() else 0.0 for a, r, ans in zip(vec_a, vec_r, answers)]
        eclf = embedding_classifier(train_texts, train_labels, names, embedder.encode)
        fidelity["embedding"] = accuracy_report(eclf, refs, labels)
        predicted_embed, _ = eclf.predict(answers)

    detector = BlendDetector.from_personas(load_personas(cfg))
    # References never blend: the detector's rate on them is its false-positive rate.
    ref_blend = [detector.detect(r, p)["blend"] for r, p in zip(refs, labels)]
    fidelity["blend_on_references"] = {
        "rate": _mean([float(b) for b in ref_blend]),
        "per_persona": {n: _mean([float(b) for b, l in zip(ref_blend, labels) if l == n]) for n in names},
    }
    for i, s in enumerate(tqdm(samples, desc="score", unit="answer", leave=False)):
        blend = detector.detect(s["answer"], s["persona"])
        s["scores"] = {
            **rouge[i],
            "bleu": sentence_bleu(s["answer"], s["reference"]),
            "semantic_similarity": similarity[i],
            "predicted_persona": predicted[i],
            "persona_match": predicted[i] == s["persona"],
            "predicted_persona_embed": predicted_embed[i],
            "persona_match_embed": None if embedder is None else predicted_embed[i] == s["persona"],
            "blend": blend["blend"],
            "blend_claimed": blend["claimed"],
            "blend_reason": blend["reason"],
            "blend_evidence": blend["evidence"],
            "words": len(s["answer"].split()),
            "new_tokens": s.pop("_new_tokens"),
            "stop": s.pop("_stop"),
        }
    groups = {"overall": _aggregate(samples)}
    groups["per_persona"] = {n: _aggregate([s for s in samples if s["persona"] == n]) for n in names}
    for by in ("per_origin", "per_kind"):
        groups[by] = {name: _aggregate([samples[i] for i in idx]) for name, idx in slices(samples, by).items()}
    return groups, fidelity


def _containment(train_records: list[dict], samples: list[dict]) -> dict[str, Any]:
    """How many evaluated references share a run of 8 words with a training answer (what "held out" means here)."""
    found = containment([r["completion"] for r in train_records], [s["reference"] for s in samples])
    return {"run_words": RUN_WORDS, "references_sharing_run": sum(c.share > 0 for c in found), "n": len(found)}


# --------------------------------------------------------------------------- outputs


def predictions_file(eval_dir: Path) -> Path:
    """The predictions file of an eval folder (``predictions.jsonl.enc`` or ``predictions.jsonl``)."""
    for name in (PREDICTIONS + ".enc", PREDICTIONS):
        if (eval_dir / name).is_file():
            return eval_dir / name
    raise PipelineError(f"no {PREDICTIONS}[.enc] in {eval_dir}", hint="run `make eval` (or `make eval-baseline`) again")


def read_predictions(cfg: Config, eval_dir: Path) -> list[dict]:
    from persona_pipeline.core.crypto import decrypt_file
    from persona_pipeline.core.records import is_encrypted

    path = predictions_file(eval_dir)
    data = decrypt_file(path, _key_for(cfg, path)) if is_encrypted(path) else path.read_bytes()
    out = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from None
    return out


def _write(cfg: Config, out: Path, metrics: dict, samples: list[dict], encrypted: bool) -> None:
    from persona_pipeline.core.crypto import encrypt_bytes
    from persona_pipeline.stages.keys import data_key
    from persona_pipeline.evaluation.report import render_report

    data = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples).encode("utf-8")
    with atomic_dir(out) as tmp:
        if encrypted:
            (tmp / (PREDICTIONS + ".enc")).write_bytes(encrypt_bytes(data, data_key(cfg)))
        else:
            (tmp / PREDICTIONS).write_bytes(data)
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / REPORT).write_text(render_report(metrics), encoding="utf-8")


# --------------------------------------------------------------------------- stage


def evaluate(cfg: Config, run_dir: Path | None, *, out_dir: Path | None = None) -> dict:
    """Evaluate per ``cfg.eval`` and write the eval folder; returns the metrics (also in ``metrics.json``)."""
    from persona_pipeline.evaluation.embeddings import load_embedder
    from persona_pipeline.evaluation.generation import GenerationSettings, generate
    from persona_pipeline.core.modeling import device
    from persona_pipeline.core.records import is_encrypted

    out = out_dir or (run_dir / EVAL_DIR[cfg.eval.source] if run_dir else cfg.outputs_dir / "baselines" / cfg.name)
    eval_path = cfg.resolve(cfg.data.eval)
    train_path = cfg.resolve(cfg.data.train)
    # Everything that can fail on user input happens before the model loads and before anything is written.
    records, eval_sha = read_eval_set(cfg)
    chosen = select_samples(records, cfg.eval.personas, cfg.eval.max_samples, str(eval_path))
    train_records, train_sha = read_dataset(cfg, train_path)
    from persona_pipeline.data.personas import load_personas

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
    gens = generate(model, tokenizer, [r["prompt"] for r in chosen], settings, batch_size=cfg.eval.batch_size, desc=f"eval {cfg.eval.source}")
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
        for i, (r, g) in enumerate(zip(chosen, gens))
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
        "run_dir": str(run_dir) if run_dir else None,
        "eval_set": {"path": str(eval_path), "sha256": eval_sha, "n_records": len(records), "n_evaluated": len(chosen),
                     "prompts_sha256": prompts_digest([(s["prompt"], s["reference"]) for s in samples]),
                     "containment": _containment(train_records, samples)},
        "train_set": {"path": str(train_path), "sha256": train_sha, "n_records": len(train_records)},
        "generation": {**settings.to_dict(), "batch_size": cfg.eval.batch_size},
        **groups,
        "fidelity": fidelity,
        "embeddings": emb_status.to_dict(),
        "timing": {
            "load_s": t1 - t0, "generate_s": t2 - t1, "score_s": t3 - t2,
            "answers_per_s": len(chosen) / max(t2 - t1, 1e-9), "new_tokens_per_s": new_tokens / max(t2 - t1, 1e-9),
            "device": str(device()),
        },
        "predictions": PREDICTIONS + (".enc" if encrypted else ""),
    }
    _write(cfg, out, metrics, samples, encrypted)
    log.info("eval written to %s", out)
    return metrics


def run(cfg: Config, *, run: str = "latest") -> int:
    from persona_pipeline.evaluation.report import COLUMNS, fmt
    from persona_pipeline.evaluation.generation import set_eval_threads

    set_eval_threads(cfg)
    run_dir, out = output_dir(cfg, run)
    m = evaluate(cfg, run_dir, out_dir=out)
    o = m["overall"]
    print(f"eval ({m['model']['source']}) on {o['n']} samples -> {out}")
    print("  " + ", ".join(f"{label} {fmt(o.get(k), pct)}" for k, label, pct in COLUMNS[1:9]))
    print(f"  persona classifier accuracy on references: {fmt(m['fidelity']['tfidf']['accuracy'], True)}")
    return 0
