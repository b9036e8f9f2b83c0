"""Server configuration for the local stack and for deployments (data files; no code of its own)."""
