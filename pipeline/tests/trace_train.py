"""Test launcher, not product code: ``torchrun ... tests/trace_train.py TRACE_DIR <train CLI args>``.

Runs ``persona-pipeline train`` as the CLI does; each rank writes ``TRACE_DIR/rank<r>.json`` with
the train-sample indices it read (dataset reads observed by wrapping the dataset class from here)
and the paths Python opened for writing (an audit hook; writes done in C++ by torch.save /
safetensors are checked through the folder listing instead).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from persona_pipeline.cli import main
from persona_pipeline.training.collate import TokenizedDataset

reads: list[tuple[int, int]] = []  # (dataset size, index): the test tells train from eval by size
writes: list[str] = []


def _getitem(self, idx, _real=TokenizedDataset.__getitem__):
    reads.append((len(self), int(idx)))
    return _real(self, idx)


def _audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        ):
            writes.append(os.fsdecode(args[0]))
    elif event in ("os.mkdir", "os.rename", "os.symlink", "os.remove", "shutil.rmtree"):
        writes.append(os.fsdecode(args[1] if event in ("os.rename", "os.symlink") else args[0]))


if __name__ == "__main__":
    trace_dir = Path(sys.argv[1])
    TokenizedDataset.__getitem__ = _getitem
    sys.addaudithook(_audit)
    rc = main(["train", *sys.argv[2:]])
    trace_dir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    (trace_dir / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "reads": reads, "writes": writes}))
    sys.exit(rc)
