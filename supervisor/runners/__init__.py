"""llama-server processes: how one is launched and run, one runner per model, the scheduler that
leases them, memory fit."""
