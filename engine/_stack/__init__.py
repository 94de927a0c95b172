"""The engine against a running stack: reporting a run, executing a stored one.

Owns :class:`~engine._stack.reporter.StackReporter` (a run's states, task runs,
logs and results sent to the stack), the pipelined ``outbox``, results in the
object store, ``entrypoint`` (finding a flow in user code), ``execute``
(executing one stored flow run: what ``python -m engine`` does) and
``diagnose`` (why a run has not started, for the CLI and the UI).

May import: ``engine.client``, the run-time (``engine._core``), the public
flow/task modules and the base modules below them. Never ``engine.runner`` or
``engine.cli``.
"""
