# Sluice developer commands. `just check` is exactly what CI runs.

set shell := ["bash", "-euo", "pipefail", "-c"]

py := if path_exists(".venv/bin/python") == "true" { ".venv/bin/python" } else { "python3" }

# Lint, format check, type check, then the whole test suite.
check: lint typecheck test

lint:
    {{py}} -m ruff check shared engine services tests bench examples
    {{py}} -m ruff format --check shared engine services tests bench examples

typecheck:
    {{py}} -m mypy

test *args:
    {{py}} -m pytest {{args}}

fmt:
    {{py}} -m ruff format shared engine services tests bench examples
    {{py}} -m ruff check --fix shared engine services tests bench examples

# Start the embedded stack (nats-server + every service).
dev:
    {{py}} -m engine.cli dev

# Orchestrator throughput beside raw JetStream KV (writes bench/results/orchestrator.md).
bench-orchestrator *args:
    {{py}} bench/orchestrator.py {{args}}

# Sluice beside Prefect 3, every scenario (installs Prefect into bench/.prefect-venv once;
# writes bench/RESULTS.md; about 15 min). `just bench-compare --quick` for a smoke run.
bench-compare *args:
    {{py}} -m bench.compare {{args}}
