"""The run-time: what happens inside a flow call, with or without a stack.

Owns the flow and task pipelines (``flow_engine``, ``task_engine``), the run
context, driving steps sync or async (``drive``), submit/map, parameters,
retry math, caching, resuming from kept results, run loggers, and the
``Reporter`` seam through which every state and log leaves a run.

May import: ``shared``, and the engine's base modules (``states``,
``exceptions``, ``triggers``, ``results``, ``executors``, ``futures``).
It never imports the client or ``runner``, and ``_stack`` only once, deferred:
a flow called with ``SLUICE_NATS_URL`` set opens a stack runtime
(``flow_engine._runtime_for``). Everything else reaches a stack through the
``Reporter`` it is given. ``flows`` and ``tasks`` sit above it.
"""
