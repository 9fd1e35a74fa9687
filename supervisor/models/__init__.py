"""Models: the store on disk, existing llama-servers behind `--upstream`, and the catalog that
resolves a name into one Model value."""
