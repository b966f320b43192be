"""``persona-pipeline <stage> --config FILE [key=value ...]``: one subcommand per pipeline stage.

The subcommands come from the stage table (:data:`persona_pipeline.stages.STAGES`).
The config is loaded and validated before the stage module is imported, so
configuration mistakes fail fast (exit 2) without importing torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from persona_pipeline.core.config import load_config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.run_config import config_for_run
from persona_pipeline.prerequisites import build_missing
from persona_pipeline.stages import STAGES, Stage, resolve

DEFAULT_CONFIG = "configs/train_tiny.yaml"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _variant_list(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated variant names, e.g. trl_best,project,project@2")
    return names


# Options without a default here take the stage function's default (defined once, in its signature).
_OPTION_ARGS: dict[str, tuple[tuple[str, ...], dict]] = {
    "force": (("--force",), dict(action="store_true", help="rebuild even if the output exists")),
    "run": (("--run",), dict(default="latest", help="run name, folder, or 'latest' (default)")),
    "resume": (("--resume",), dict(default=None, help="continue a run from its last checkpoint ('latest', a name or a folder)")),
    "dry_run": (("--dry-run",), dict(action="store_true", help="stage everything locally, send nothing")),
    "persona": (("--persona",), dict(default=None, help="persona name (default: the first of eval.personas, else of the persona files)")),
    "question": (("--question", "-q"), dict(default=None, help="the question to answer")),
    "backend": (("--backend",), dict(default="transformers", choices=("transformers", "llamacpp"),
                                     help="transformers (eval.source: adapter, merged or base) or llamacpp (the run's GGUF)")),
    "temperature": (("--temperature",), dict(default=None, type=float,
                                             help="sample at this temperature (0: greedy; default: the eval config's decoding)")),
    "input": (("--input",), dict(default=None, help="input file")),
    "output": (("--output",), dict(default=None, help="output file or folder")),
    "steps": (("--steps",), dict(type=_positive, help="optimizer steps per variant and repeat "
                                 "(default: bench-train 8 timed steps, bench-train-trl 40 = one epoch over their samples)")),
    "samples": (("--samples",), dict(type=_positive, help="eval samples: prompts to generate (bench-eval 32, bench-format 24), "
                                     "or scored for eval loss after training (bench-train-trl 48)")),
    "variants": (("--variants",), dict(type=_variant_list, help="bench-train-trl: comma-separated variants, each "
                                       "optionally @THREADS (default trl_defaults,trl_best,trl_padding_free,project)")),
    "repeats": (("--repeats",), dict(type=_positive, help="benchmark repeats; medians are reported (default 3)")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona-pipeline",
        description="Persona fine-tuning pipeline: data -> tokenize -> train -> merge -> eval -> gguf -> publish.",
        epilog="Every stage takes --config FILE and any number of key=value overrides, "
        "e.g. `persona-pipeline train --config configs/train_tiny.yaml train.epochs=1`.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for stage in STAGES:
        sp = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        default = "the run's saved config.yaml, else " if "run" in stage.options else ""
        sp.add_argument("--config", default=None,
                        help=f"YAML config: a path or a bare name such as train_tiny (default: {default}{DEFAULT_CONFIG})")
        for opt in stage.options:
            if opt == "overrides":  # the key=value list below, passed through as well
                continue
            flags, kwargs = _OPTION_ARGS[opt]
            sp.add_argument(*flags, **kwargs)
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="override config values")
        sp.set_defaults(_stage=stage)
    return parser


def stage_kwargs(stage: Stage, args: argparse.Namespace) -> dict:
    """The declared options of ``stage`` as keyword arguments (a stage's signature is its CLI)."""
    kwargs = {opt: getattr(args, opt) for opt in stage.options if opt != "overrides" and getattr(args, opt) is not None}
    if "overrides" in stage.options:
        kwargs["overrides"] = tuple(args.overrides)
    return kwargs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    stage: Stage = args._stage
    start = time.perf_counter()
    try:
        cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
        if "run" in stage.options:
            cfg = config_for_run(cfg, args.run, args.overrides, explicit=args.config is not None)
        build_missing(stage.name, cfg)
        rc = resolve(stage)(cfg, **stage_kwargs(stage, args)) or 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"\ninterrupted: {stage.name}", file=sys.stderr)
        return 130
    if rc == 0:
        print(f"[{stage.name}] done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
