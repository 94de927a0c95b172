"""Sluice's long-running services, one package per process (``python -m services.<name>``)."""
