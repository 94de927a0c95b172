"""Sluice's long-running services, one package per process (``python -m services.<name>``).

Each package owns one job and says so in its docstring. They meet only through
the wire contract in :mod:`shared` (subjects, buckets, messages); none imports
another's internals. ``_service`` is the base every service is built on (an
async context manager in one task group), ``_main`` the shared process entry
(signals, uvloop, logging), ``_rpc`` the request/reply plumbing.
"""
