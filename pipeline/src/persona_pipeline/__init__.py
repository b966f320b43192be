"""Persona fine-tuning pipeline: LoRA / QLoRA fine-tuning of causal LMs to answer as documentary personas.

Where things are (imports flow one way: stages -> helpers -> core; tests/test_layout.py checks it):

- ``stages/``: one module per ``make`` target, each a ``run(cfg, *, ...)`` whose keyword options are
  its CLI. ``stages/__init__.py`` is the table of them: read it first.
- helpers, grouped by concern: ``data/`` (personas, transcripts, synthetic samples, the split),
  ``training/`` (tokenized cache, batching, Trainer callbacks), ``evaluation/`` (generation,
  metrics, fidelity, reports), ``export/`` (GGUF, llama.cpp, Modelfiles, model card).
- ``core/``: the config schema (``config.py``), the run-folder layout (``runs.py``), the prompt
  format (``prompt_format.py``), records and encryption, model loading (``modeling.py``).
"""

__version__ = "0.1.0"
