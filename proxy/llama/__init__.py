"""The hop to llama-server: its wire shapes, the pooled HTTP client, and the lease that routes use."""
