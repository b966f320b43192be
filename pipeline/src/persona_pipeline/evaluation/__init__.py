"""Evaluation helpers: generation, metrics, embeddings, persona fidelity, reports."""
