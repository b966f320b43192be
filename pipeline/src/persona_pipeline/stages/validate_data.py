"""`make validate-data`: schema, empty fields, prompt format, token lengths, duplicates and train/eval leakage.

Prints a report and writes it as JSON to ``outputs/data_validation.json``
(line numbers and counts only, never sample text). Exits 1 on schema errors or
leakage: an eval sample whose question or answer has a near-duplicate in train,
or whose ``meta.group`` also occurs in train, or more than 2 % of eval answers
sharing an 8-word run with a train answer (containment, see data/split.py).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from persona_pipeline.core.config import Config
from persona_pipeline.core.crypto import data_key
from persona_pipeline.core.fsutil import atomic_write_json
from persona_pipeline.core.prompt_format import PromptFormatError, parse_prompt
from persona_pipeline.core.records import KINDS, Record, is_encrypted, read_records
from persona_pipeline.data.dedup import Sample, find_leaks, shingles, similar_pairs
from persona_pipeline.data.personas import load_personas
from persona_pipeline.data.split import RUN_WORDS, containment

log = logging.getLogger(__name__)

REPORT_FILE = "data_validation.json"
# The issue-11 bar: at most this share of eval answers may quote 8 words of a train answer.
MAX_CONTAINED_SHARE = 0.02
MAX_LISTED = 20
# Subword tokenizers split English into more tokens than words; used only without a tokenizer.
WORDS_TO_TOKENS = 1.33


def _token_counter(cfg: Config) -> tuple[Callable[[str], int], str]:
    """Count tokens with the model's tokenizer when it loads offline, else estimate from words."""
    name = cfg.model.name_or_path
    local = cfg.resolve(name)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if local.exists() or looks_like_hub_id:
        try:
            tok = AutoTokenizer.from_pretrained(
                str(local) if local.exists() else name,
                local_files_only=True,
                revision=cfg.model.revision,
                trust_remote_code=cfg.model.trust_remote_code,
            )
            return (lambda text: len(tok(text, add_special_tokens=True)["input_ids"]) + 1), f"tokenizer of {name}"
        except Exception as exc:  # any failure means "not available offline"
            log.info("tokenizer not loadable offline (%s: %s)", type(exc).__name__, exc)
    print(f"notice: the tokenizer of {name} is not available offline; token lengths are estimated "
          f"as {WORDS_TO_TOKENS} x whitespace words (build it with `make base-model`, or download the model)")
    return (lambda text: math.ceil(len(text.split()) * WORDS_TO_TOKENS) + 1), "estimate (whitespace words)"


def _check_records(
    records: list[Record], split: str, personas: Collection[str]
) -> tuple[list[dict[str, Any]], list[Sample | None]]:
    """Schema and format problems per record, and the (question, answer) of every well-formed record."""
    problems: list[dict[str, Any]] = []
    samples: list[Sample | None] = []

    def problem(r: Record, msg: str) -> None:
        problems.append({"split": split, "line": r["meta"].get("line"), "problem": msg})

    for r in records:
        bad = False
        for field in ("prompt", "completion"):
            if not r[field].strip():
                problem(r, f"'{field}' is empty or whitespace")
                bad = True
        if bad:
            samples.append(None)
            continue
        if not r["completion"].startswith(" "):
            problem(r, "completion must start with a space (' answer') to follow 'Name:'")
        try:
            parsed = parse_prompt(r["prompt"])
        except PromptFormatError as exc:
            problem(r, f"prompt: {exc}")
            samples.append(None)
            continue
        if parsed.name not in personas:
            problem(r, f"the persona named in the prompt has no persona file (known: {', '.join(sorted(personas))})")
        meta = r["meta"]
        # Field names and expectations only: the values are record content.
        if "persona" in meta and meta["persona"] != parsed.name:
            problem(r, "meta.persona does not match the persona named in the prompt's 'You are <Name>, ...'")
        if "kind" in meta and meta["kind"] not in KINDS:
            problem(r, f"meta.kind is not one of {', '.join(KINDS)}")
        if "turns" in meta and meta["turns"] != parsed.turns:
            problem(r, f"meta.turns does not match the prompt, which has {parsed.turns} question(s)")
        samples.append(Sample(parsed.question, r["completion"], meta.get("group")))
    return problems, samples


def _lengths(records: list[Record], count: Callable[[str], int], max_length: int) -> dict[str, Any]:
    lens = [count(r["prompt"] + r["completion"]) for r in records]
    over = [r["meta"].get("line") for r, n in zip(records, lens, strict=True) if n > max_length]
    return {
        "max": max(lens, default=0),
        "mean": round(statistics.fmean(lens), 1) if lens else 0,
        "p95": sorted(lens)[int(0.95 * (len(lens) - 1))] if lens else 0,
        "truncated": len(over),
        "truncated_lines": over[:MAX_LISTED],
    }


def _duplicates(records: list[Record], samples: list[Sample | None], threshold: float) -> dict[str, Any]:
    exact = Counter((r["prompt"], r["completion"]) for r in records)
    idx = [i for i, s in enumerate(samples) if s is not None]
    near = 0
    for field in ("question", "answer"):
        near += len(similar_pairs([shingles(getattr(samples[i], field)) for i in idx], threshold))
    return {"exact_duplicates": sum(n - 1 for n in exact.values() if n > 1), "near_duplicate_pairs": near}


def validate(
    cfg: Config, train: list[Record], evals: list[Record], count: Callable[[str], int], personas: Collection[str]
) -> dict[str, Any]:
    """The validation report (a dict of counts and line numbers); ``ok`` is False on errors or leakage.

    ``personas`` are the names with a persona file; other names in records count as ``?``.
    """
    threshold = cfg.generate.near_duplicate_threshold
    report: dict[str, Any] = {"splits": {}, "schema_errors": []}
    checked = {}
    for split, records in (("train", train), ("eval", evals)):
        problems, samples = _check_records(records, split, personas)
        report["schema_errors"] += problems
        checked[split] = samples
        # Only names the project defines become keys: anything else in meta is record content.
        kinds = Counter(
            (p if (p := r["meta"].get("persona")) in personas else "?", k if (k := r["meta"].get("kind")) in KINDS else "?")
            for r in records
        )
        report["splits"][split] = {
            "records": len(records),
            "by_persona_kind": {f"{p}/{k}": n for (p, k), n in sorted(kinds.items())},
            "multi_turn": sum(1 for r in records if isinstance(t := r["meta"].get("turns", 1), int) and t > 1),
            "lengths": _lengths(records, count, cfg.data.max_length),
            **_duplicates(records, samples, threshold),
        }
    tr = [(i, s) for i, s in enumerate(checked["train"]) if s is not None]
    ev = [(j, s) for j, s in enumerate(checked["eval"]) if s is not None]
    leaks = find_leaks(
        [s for _, s in tr], [s for _, s in ev], threshold,
        train_groups=[s.seed_group for _, s in tr], eval_groups=[s.seed_group for _, s in ev],
    )
    exact_cross = {(r["prompt"], r["completion"]) for r in train} & {(r["prompt"], r["completion"]) for r in evals}
    listed = []
    for lk in leaks:
        listed.append({
            "eval_line": evals[ev[lk.eval_index][0]]["meta"].get("line"),
            "train_line": train[tr[lk.train_index][0]]["meta"].get("line"),
            "field": lk.field,
            "similarity": round(lk.similarity, 3),
        })
    leaky_eval = {d["eval_line"] for d in listed}
    report["leakage"] = {
        "eval_samples_leaked": len(leaky_eval),
        "by_field": dict(Counter(d["field"] for d in listed)),
        "exact_cross_duplicates": len(exact_cross),
        "examples": listed[:MAX_LISTED],
    }
    report["containment"] = _containment(train, evals)
    report["has_groups"] = all(s is None or s.seed_group is not None for s in checked["train"] + checked["eval"])
    report["ok"] = (not report["schema_errors"] and not leaky_eval and not exact_cross
                    and report["containment"]["share_of_eval_answers"] <= MAX_CONTAINED_SHARE)
    return report


def _containment(train: list[Record], evals: list[Record]) -> dict[str, Any]:
    """How many eval answers share an 8-word run with a train answer, and which lines."""
    found = containment([r["completion"] for r in train], [r["completion"] for r in evals])
    hit = [(r, c) for r, c in zip(evals, found, strict=True) if c.share > 0]
    return {
        "run_words": RUN_WORDS,
        "eval_answers_sharing_run": len(hit),
        "share_of_eval_answers": len(hit) / len(evals) if evals else 0.0,
        "limit": MAX_CONTAINED_SHARE,
        "mean_share_of_runs": statistics.fmean(c.share for c in found) if found else 0.0,
        "max_share_of_runs": max((c.share for c in found), default=0.0),
        "examples": [
            {"eval_line": r["meta"].get("line"), "train_line": train[c.train_index]["meta"].get("line"), "share": round(c.share, 3)}
            for r, c in hit[:MAX_LISTED] if c.train_index is not None
        ],
    }


def _print(report: dict[str, Any], paths: dict[str, Path], counter_name: str, max_length: int) -> None:
    print(f"{'split':<7}{'records':>8}{'multi-turn':>11}{'max tok':>9}{'mean':>8}{'p95':>6}"
          f"{'>' + str(max_length):>8}{'exact dup':>11}{'near-dup pairs':>16}")
    for split, s in report["splits"].items():
        ln = s["lengths"]
        print(f"{split:<7}{s['records']:>8}{s['multi_turn']:>11}{ln['max']:>9}{ln['mean']:>8}{ln['p95']:>6}"
              f"{ln['truncated']:>8}{s['exact_duplicates']:>11}{s['near_duplicate_pairs']:>16}")
    print(f"(token counts: {counter_name}; '>{max_length}': samples that would be truncated at data.max_length)")
    kinds = sorted({k for s in report["splits"].values() for k in s["by_persona_kind"]})
    if kinds:
        print(f"\n{'persona/kind':<26}{'train':>7}{'eval':>7}")
        for k in kinds:
            print(f"{k:<26}" + "".join(f"{report['splits'][s]['by_persona_kind'].get(k, 0):>7}" for s in ("train", "eval")))
    lk = report["leakage"]
    fields = ", ".join(f"{k}: {v}" for k, v in lk["by_field"].items())
    print(f"\nleakage: {lk['eval_samples_leaked']} eval sample(s) with a near-duplicate or shared group in train"
          f"{f' ({fields})' if fields else ''}; exact train/eval duplicates: {lk['exact_cross_duplicates']}")
    for d in lk["examples"][:5]:
        print(f"  {paths['eval']} line {d['eval_line']} ~ {paths['train']} line {d['train_line']} ({d['field']}, {d['similarity']})")
    c = report["containment"]
    print(f"containment: {c['eval_answers_sharing_run']} of {report['splits']['eval']['records']} "
          f"eval answers ({c['share_of_eval_answers']:.1%}) share a run of {c['run_words']} words with a train answer "
          f"(limit {c['limit']:.0%}); mean share of runs {c['mean_share_of_runs']:.3f}, max {c['max_share_of_runs']:.3f}")
    for d in c["examples"][:5]:
        print(f"  {paths['eval']} line {d['eval_line']} quotes {paths['train']} line {d['train_line']} "
              f"({d['share']:.0%} of its runs)")
    if not report["has_groups"]:
        print("note: some records have no meta.group; leakage was checked by text similarity only")
    for e in report["schema_errors"][:MAX_LISTED]:
        print(f"error: {paths[e['split']]}:{e['line']}: {e['problem']}")
    if len(report["schema_errors"]) > MAX_LISTED:
        print(f"... and {len(report['schema_errors']) - MAX_LISTED} more schema errors")


def run(cfg: Config) -> int:
    paths = {"train": cfg.resolve(cfg.data.train), "eval": cfg.resolve(cfg.data.eval)}
    key = data_key(cfg) if any(is_encrypted(p) for p in paths.values()) else None
    train = read_records(paths["train"], key)
    evals = read_records(paths["eval"], key)
    count, counter_name = _token_counter(cfg)
    report = validate(cfg, train, evals, count, set(load_personas(cfg)))
    report["token_counter"] = counter_name
    report["files"] = {k: str(v) for k, v in paths.items()}
    out = cfg.outputs_dir / REPORT_FILE
    atomic_write_json(out, report)
    _print(report, paths, counter_name, cfg.data.max_length)
    verdict = "OK" if report["ok"] else "FAILED"
    print(f"\nvalidate-data: {verdict}; report: {out}")
    return 0 if report["ok"] else 1
