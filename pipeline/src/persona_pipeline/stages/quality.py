"""``make quality``: the whole pipeline on a real pretrained model (SmolLM2-135M-Instruct) on the CPU.

data -> train -> merge -> eval of the baseline and of the fine-tuned model -> compare (table, chart,
TRAINING_LOG row) -> GGUF F16 and Q8_0 -> gguf-check of both, then the demo's table of stage
times and key figures. Same runner as ``make demo``; only the plan and the config differ. F16 must
reproduce transformers' greedy output in llama.cpp (gguf-check fails otherwise, and so does this).
"""

from __future__ import annotations

from persona_pipeline.core.config import Config
from persona_pipeline.stages.demo import Step, pipeline_steps, run_plan

GGUF_TYPES = ("F16", "Q8_0")


def plan(force: bool) -> list[Step]:
    return pipeline_steps(force, GGUF_TYPES)


def run(cfg: Config, *, force: bool = False, overrides: tuple[str, ...] = ()) -> int:
    print(run_plan(cfg, plan(force), overrides))
    return 0
