"""Training helpers: batching/collation and Trainer callbacks."""
