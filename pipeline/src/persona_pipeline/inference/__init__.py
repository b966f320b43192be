"""Using a trained persona: streaming answers through transformers or llama.cpp."""
