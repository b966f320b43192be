"""Stage ``publish-hf``: stage a run's model, GGUF and model card, then upload them to the Hugging Face Hub.

Everything goes into a subfolder named after the config (``llama31-8b-instruct/``),
so one repository can hold several base models. The upload folder is built
locally first from an allow-list of file names, then checked against a
deny-list (keys, plaintext or encrypted data, checkpoints, optimizer states,
pickles): ``DRY_RUN=1`` stops after that and lists what would be sent.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import shutil
from pathlib import Path

from huggingface_hub import HfApi, get_token

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import ConfigError, PipelineError
from persona_pipeline.core.fsutil import atomic_dir, atomic_write_text
from persona_pipeline.core.runs import RunDir
from persona_pipeline.export.model_card import build_model_card

log = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
               "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
GGUF_FILES = ("*.gguf", "Modelfile", "Modelfile.*")
# Never uploaded, whatever the allow-list says.
FORBIDDEN = ("*.key", "*.jsonl", "*.jsonl.enc", "*.enc", "*.pt", "*.pth", "*.bin", "*.pkl", "*.ckpt", ".env",
             ".hf_token", "*token*.txt", "trainer_state.json", "training_args.bin", "optimizer*", "scheduler*",
             "rng_state*")
FORBIDDEN_DIRS = (".secrets", "checkpoint-*", "checkpoints", "logs", "plaintext", "data")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_repo_id(repo_id: str | None) -> str:
    if not repo_id:
        raise ConfigError("no Hub repository given", hint="make publish-hf HF_REPO_ID=owner/name (or publish.repo_id)")
    if not _REPO_RE.match(repo_id) or "--" in repo_id or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise ConfigError(
            f"HF_REPO_ID={repo_id!r} is not a Hub repository id of the form owner/name",
            hint="letters, digits, '-', '_' and '.', e.g. HF_REPO_ID=alice/documentary-personas",
        )
    return repo_id


def hub_token() -> str | None:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    return get_token()


def subfolder_for(cfg: Config) -> str:
    """publish.subfolder, else the config name with '-' (llama31_8b_instruct -> llama31-8b-instruct)."""
    name = cfg.publish.subfolder or cfg.name.replace("_", "-")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
        raise ConfigError(f"publish.subfolder {name!r} must be one folder name (letters, digits, '-', '_', '.')")
    return name


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _place(src: Path, dst: Path) -> None:
    """Hard-link (no copy of multi-GB weights) or copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def forbidden_files(folder: Path) -> list[str]:
    """Paths under ``folder`` that must never be published."""
    bad = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(_matches(part, FORBIDDEN_DIRS) for part in rel.parts[:-1]) or _matches(rel.name, FORBIDDEN):
            bad.append(str(rel))
        elif path.is_dir() and _matches(rel.name, FORBIDDEN_DIRS):
            bad.append(str(rel) + "/")
    return bad


def _select(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _matches(p.name, patterns))


def stage_publish(cfg: Config, run_dir: RunDir, dry_run: bool = True, *, repo_id: str | None = None) -> Path:
    """Build ``run/publish/<subfolder>/``: the exact folder that is uploaded. Returns its path."""
    repo_id = check_repo_id(repo_id or cfg.publish.repo_id)
    subfolder = subfolder_for(cfg)
    artifact = cfg.publish.artifact
    if artifact == "merged":
        source = run_dir.require_merged()
        files = _select(source, MODEL_FILES + TOKENIZER_FILES)
    else:
        source = run_dir.require_adapter()
        files = _select(source, ADAPTER_FILES + TOKENIZER_FILES)
    gguf_files: list[Path] = []
    extra: list[Path] = []
    if cfg.publish.include_gguf and run_dir.gguf.is_dir():
        extra = _select(run_dir.gguf, GGUF_FILES)
        gguf_files = [p for p in extra if p.suffix == ".gguf"]
        if not gguf_files:
            log.warning("publish.include_gguf is set but %s holds no GGUF (run `make gguf`)", run_dir.gguf)
            extra = []
    card = build_model_card(cfg, run_dir, repo_id=repo_id, subfolder=subfolder, artifact=artifact, gguf_files=gguf_files)
    out = run_dir.publish / subfolder
    with atomic_dir(out) as tmp:
        for f in files:
            _place(f, tmp / f.name)
        for f in extra:
            _place(f, tmp / "gguf" / f.name)
        atomic_write_text(tmp / "README.md", card)
        bad = forbidden_files(tmp)
        if bad:  # the allow-list makes this unreachable; it guards future edits of it
            raise PipelineError(f"refusing to publish private files: {', '.join(bad)}")
    log.info("staged %s (%s)", out, "dry run: nothing will be sent" if dry_run else f"for upload to {repo_id}/{subfolder}")
    return out


def describe(folder: Path) -> tuple[list[tuple[str, int]], int]:
    files = sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    return files, sum(s for _, s in files)


def upload(cfg: Config, folder: Path, repo_id: str, token: str, run_name: str) -> str:
    subfolder = subfolder_for(cfg)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=cfg.publish.private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), path_in_repo=subfolder, repo_type="model",
            commit_message=f"persona-pipeline: {cfg.name} (run {run_name})",
        )
    except Exception as exc:  # network, permission, quota: all reported the same way
        raise PipelineError(
            f"upload to {repo_id} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint="check the token's write permission (`huggingface-cli whoami`) and the network; "
            f"the staged folder {folder} is kept",
        ) from None
    return getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}/tree/main/{subfolder}"


def run(cfg: Config, *, run: str = "latest", dry_run: bool = False) -> int:
    # Everything the user can get wrong is checked before any work.
    repo_id = check_repo_id(cfg.publish.repo_id)
    token = None
    if not dry_run:
        token = hub_token()
        if not token:
            raise PipelineError(
                "no Hugging Face token: HF_TOKEN is not set and `huggingface-cli login` was not run",
                hint="export HF_TOKEN=hf_... (a token with write access), or run with DRY_RUN=1 to only stage",
            )
    run_dir = RunDir.resolve(cfg.runs_dir, run)
    folder = stage_publish(cfg, run_dir, dry_run=dry_run, repo_id=repo_id)
    files, total = describe(folder)
    target = f"{repo_id}/{subfolder_for(cfg)}"
    print(f"{'would upload' if dry_run else 'uploading'} {len(files)} files ({total / 1e6:.1f} MB) to {target}:")
    for name, size in files:
        print(f"  {name:50s} {size / 1e6:10.2f} MB")
    if dry_run:
        print(f"dry run: nothing sent; staged folder {folder}")
        return 0
    url = upload(cfg, folder, repo_id, token, run_dir.name)
    print(f"uploaded: {url}")
    return 0
