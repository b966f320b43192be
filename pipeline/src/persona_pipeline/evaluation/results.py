"""Eval folders on disk: choosing the samples, writing ``metrics.json`` + predictions + ``report.md``,
and reading them back with the checks that ``compare`` and the model card rely on.

Predictions hold the eval prompts and references, so they are encrypted with the
data key when the eval set is (``predictions.jsonl.enc``).
"""

from __future__ import annotations

import hashlib
import json

from persona_pipeline.core.config import Config
from persona_pipeline.core.crypto import data_key, decrypt_file, encrypt_bytes
from persona_pipeline.core.errors import DataError, PipelineError
from persona_pipeline.core.fsutil import atomic_dir
from persona_pipeline.core.records import Record, is_encrypted, persona_of
from persona_pipeline.core.runs import EvalDir, read_json
from persona_pipeline.evaluation.report import render_report


def select_samples(records: list[Record], personas: list[str], max_samples: int | None, source: str) -> list[Record]:
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


def write_eval(cfg: Config, out: EvalDir, metrics: dict, samples: list[dict], encrypted: bool) -> None:
    """The whole eval folder at once (atomically): predictions, metrics.json, report.md."""
    data = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples).encode("utf-8")
    with atomic_dir(out.path) as tmp:
        staged = EvalDir(tmp)
        name = staged.predictions_name(encrypted)
        (tmp / name).write_bytes(encrypt_bytes(data, data_key(cfg)) if encrypted else data)
        staged.metrics.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        staged.report.write_text(render_report(metrics), encoding="utf-8")


def read_predictions(cfg: Config, eval_dir: EvalDir) -> list[dict]:
    """The per-sample predictions of an eval folder (decrypted in memory when encrypted)."""
    path = eval_dir.predictions()
    data = decrypt_file(path, data_key(cfg)) if is_encrypted(path) else path.read_bytes()
    out = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from None
    return out


def load_eval(cfg: Config, eval_dir: EvalDir, what: str, hint: str) -> tuple[dict, list[dict]]:
    """(metrics, predictions) of an eval folder, after checking the predictions are the ones scored."""
    if not eval_dir.metrics.is_file():
        raise PipelineError(f"no {what} eval: {eval_dir.metrics} not found", hint=hint)
    metrics = read_json(eval_dir.metrics, written_by="make eval")
    preds = read_predictions(cfg, eval_dir)
    digest = prompts_digest([(p["prompt"], p["reference"]) for p in preds])
    if digest != metrics.get("eval_set", {}).get("prompts_sha256"):
        raise PipelineError(
            f"{eval_dir.path}: the predictions file does not hold the prompts its metrics.json was computed on "
            "(it comes from another eval set or another eval run)",
            hint=f"re-run the {what} eval so that both files come from one run",
        )
    return metrics, preds


def read_metrics(eval_dir: EvalDir) -> dict | None:
    """``metrics.json`` of an eval folder; None only when that eval was never run (no folder)."""
    if not eval_dir.path.exists():
        return None
    return read_json(eval_dir.metrics, written_by="make eval")
