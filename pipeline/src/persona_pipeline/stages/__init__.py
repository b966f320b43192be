"""One module per `make` target; each exposes `run(cfg, ...)`. Helpers live in the sibling packages."""
