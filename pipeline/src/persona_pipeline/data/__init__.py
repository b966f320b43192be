"""Persona data helpers: persona files, transcript ingestion, rephrasing, synthesis, near-duplicate grouping."""
