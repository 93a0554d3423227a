"""The Label Studio ML backend: HTTP protocol, webhook, Redis state, RQ jobs, CLI."""
