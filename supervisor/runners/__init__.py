"""llama-server processes: one runner per model, the scheduler that leases them, memory fit."""
