"""Stage ``tokenize``: build (or reuse) the encrypted token cache of both splits and report it.

The sample layout, truncation rule and cache are described in
:mod:`persona_pipeline.training.tokenized`, which ``train`` reads the cache through.
"""

from __future__ import annotations

from persona_pipeline.core.config import Config
from persona_pipeline.training.tokenized import tokenize


def run(cfg: Config, *, force: bool = False) -> int:
    stats = tokenize(cfg, force=force)
    for split, s in stats.items():
        state = "reused cache" if s["from_cache"] else "tokenized"
        print(
            f"{split}: {state}: {s['samples']} samples, {s['tokens']} tokens ({s['label_tokens']} in completions), "
            f"mean length {s['mean_len']}, max {s['max_len']} / {s['max_length']}"
        )
        if s["prompt_truncated"] or s["completion_truncated"] or s["dropped_empty"]:
            print(
                f"  {s['prompt_truncated']} prompts cut from the left to fit max_length, "
                f"{s['completion_truncated']} completions cut, {s['dropped_empty']} empty completions dropped"
            )
        else:
            print("  no sample needed truncation")
        print(f"  cache: {s['cache']} (encrypted with the data key)")
    return 0
