"""Core building blocks every stage uses: config schema, errors, run folders, files, encryption, records, prompt format, model loading."""
