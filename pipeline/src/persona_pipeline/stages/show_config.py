"""``make show-config``: print the resolved, validated config (secrets redacted)."""

from __future__ import annotations

from persona_pipeline.core.config import Config, dump_config


def run(cfg: Config) -> int:
    print(dump_config(cfg), end="")
    return 0
