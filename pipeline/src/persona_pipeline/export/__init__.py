"""Export helpers: GGUF vocabulary, llama.cpp runtime, model card."""
