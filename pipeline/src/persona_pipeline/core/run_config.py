"""A run remembers its config: ``run/config.yaml`` (written by ``make train``) is the default for the stages after it.

Stages that take ``--run`` (merge, eval, compare, gguf, gguf-check, publish-hf,
chat, ask, ...) use the run's saved config when no ``--config`` is given, so a
bare ``make merge`` after training an 8B config merges into the 8B base model,
not the tiny default. A config that *is* given must train the same model on the
same training data as the run; otherwise it is an error naming both.
"""

from __future__ import annotations

import logging

from persona_pipeline.core.config import Config, load_config, model_location
from persona_pipeline.core.errors import ConfigError, PipelineError
from persona_pipeline.core.runs import RunDir

log = logging.getLogger(__name__)


def _identity(cfg: Config) -> dict[str, str]:
    """What must match between a run and a config used on it: the base model and the training data.

    The eval set may differ: evaluating a run on your own file (EVAL_FILE) is the point of that option.
    """
    return {"model": model_location(cfg), "data.train": str(cfg.resolve(cfg.data.train).resolve())}


def config_for_run(cfg: Config, run: str | None, overrides: list[str], *, explicit: bool) -> Config:
    """The config a ``--run`` stage should use.

    ``cfg`` is the config from ``--config`` (or the default one when ``explicit`` is false). A run
    without a saved config (or no run at all) keeps ``cfg``; the stage reports a missing run itself.
    """
    try:
        run_dir = RunDir.resolve(cfg.runs_dir, run)
    except PipelineError:
        return cfg
    saved = run_dir.config
    if not saved.is_file():
        return cfg
    try:
        # Compared as saved (a key=value override of the model or data is checked too), used with the overrides.
        run_cfg = load_config(saved, [] if explicit else overrides)
    except ConfigError as exc:  # e.g. written by an older version that redacted eval.max_new_tokens
        log.warning("run %s: its %s cannot be used (%s); using %s", run_dir.name, saved.name, str(exc).splitlines()[0], cfg.source_file)
        return cfg
    # The saved file's relative paths (outputs/, data/...) mean the same folders as when it was written.
    run_cfg.root = cfg.root
    if not explicit:
        log.info("using the config saved with run %s (%s)", run_dir.name, saved)
        return run_cfg
    mine, theirs = _identity(cfg), _identity(run_cfg)
    differ = [k for k in mine if mine[k] != theirs[k]]
    if differ:
        both = "; ".join(f"{k}: {mine[k]} (config) vs {theirs[k]} (run)" for k in differ)
        raise ConfigError(
            f"config {cfg.source_file} ({cfg.name}) does not match run {run_dir.name}, trained with config "
            f"{run_cfg.name} ({saved}): {both}",
            hint="leave out --config / TRAIN_CONFIG / EVAL_CONFIG to use the run's own config, "
            "or pick a RUN=... trained with this config",
        )
    return cfg

