# Sluice developer commands. `just check` is exactly what CI runs.

set shell := ["bash", "-euo", "pipefail", "-c"]

py := if path_exists(".venv/bin/python") == "true" { ".venv/bin/python" } else { "python3" }

# Lint, format check, type check, the documentation site (strict), then the whole test suite.
check: lint typecheck docs-build test

lint:
    {{py}} -m ruff check shared engine services tests bench examples docs/_hooks
    {{py}} -m ruff format --check shared engine services tests bench examples docs/_hooks

typecheck:
    {{py}} -m mypy

test *args:
    {{py}} -m pytest {{args}}

# Serve the documentation site with live reload on http://127.0.0.1:8000.
docs *args:
    NO_MKDOCS_2_WARNING=1 {{py}} -m mkdocs serve {{args}}

# Build the documentation site into site/; any warning (a broken link, a missing reference) fails.
docs-build *args:
    NO_MKDOCS_2_WARNING=1 {{py}} -m mkdocs build --strict {{args}}

fmt:
    {{py}} -m ruff format shared engine services tests bench examples docs/_hooks
    {{py}} -m ruff check --fix shared engine services tests bench examples docs/_hooks

# Start the embedded stack (nats-server + every service).
dev:
    {{py}} -m engine.cli dev

# Orchestrator throughput beside raw JetStream KV (writes bench/results/orchestrator.md).
bench-orchestrator *args:
    {{py}} -m bench.orchestrator {{args}}

# Sluice beside Prefect 3, every scenario (installs Prefect into bench/.prefect-venv once;
# writes bench/RESULTS.md; about 15 min). `just bench-compare --quick` for a smoke run.
bench-compare *args:
    {{py}} -m bench.compare {{args}}

# Scheduler lag and idle cost (writes bench/results/scheduler.md; --quick to only print).
bench-scheduler *args:
    {{py}} -m bench.scheduler {{args}}

# Runner start latency, throughput and CPU per run (writes bench/results/runner.md; --fork: runner-fork.md).
bench-runner *args:
    {{py}} -m bench.runner {{args}}

# CPU of the primitives a run is made of: fsynced writes, reads, forks (bench/results/primitives.md).
bench-primitives *args:
    {{py}} -m bench.primitives {{args}}

# Cancellation and crash-detection latency (writes bench/results/cancel.md).
bench-cancel *args:
    {{py}} -m bench.cancel {{args}}

# Engine overhead per task (`--stack` to report to a real stack).
bench-engine *args:
    {{py}} bench/engine_overhead.py {{args}}

# --- the stack in Docker (docker-compose.yml) ------------------------------------------

# Build the image and start the stack (`just up --scale runner=4`; traces: COMPOSE_PROFILES=otel).
up *args:
    docker compose up --build {{args}}

# Stop the stack (`just down -v` also drops the JetStream volume).
down *args:
    docker compose down {{args}}

# The real-Docker stage: tests/docker/ (compose, DockerFlowRunner) against a Docker engine,
# started first when none answers and this runs as root (deploy/ci/docker-engine.sh; a
# dockerd it started is stopped again). Skips, saying why, only when no engine can be had.
test-docker *args:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! deploy/ci/docker-engine.sh can; then
        echo "SKIPPED the Docker stage: no Docker engine answers and none can be started here (that needs root and apt-get)"
        exit 0
    fi
    started=$(deploy/ci/docker-engine.sh ensure)
    if [ "$started" = started ]; then trap 'deploy/ci/docker-engine.sh stop' EXIT; fi
    tag=$({{py}} -c 'from engine.docker_runner import default_image; print(default_image())')
    echo "docker build -t $tag (deploy/Dockerfile, --network host)"
    DOCKER_BUILDKIT=0 docker build -q --network host -f deploy/Dockerfile -t "$tag" . >/dev/null
    docker image prune -f --filter label=io.sluice.image=sluice >/dev/null  # builds it replaced
    SLUICE_REQUIRE_DOCKER=1 {{py}} -m pytest tests/docker -m docker {{args}}

# The compose smoke test and the NATS permission tests (no Docker needed).
test-deploy *args:
    {{py}} -m pytest tests/test_compose.py tests/test_security.py {{args}}

# --- each service alone, against $SLUICE_NATS_URL (see `python -m services.<name> --help`) ---

# A local nats-server with deploy/nats/ (users and permissions; set SLUICE_<ROLE>_PASSWORD).
nats store=".sluice/nats-deploy":
    mkdir -p {{store}}
    $({{py}} -c 'from services.dev._natsserver import server_binary; print(server_binary())') \
        --config deploy/nats/nats.conf --store_dir {{store}} -a 127.0.0.1

# The orchestrator alone (the only writer of flow-run state).
orchestrator *args:
    {{py}} -m services.orchestrator {{args}}

# The scheduler alone.
scheduler *args:
    {{py}} -m services.scheduler {{args}}

# The cancellation-watcher alone.
cancellation-watcher *args:
    {{py}} -m services.cancellation_watcher {{args}}

# A runner of the default queue serving the example deployments (flags: --help).
runner *args="--queue default --register examples/deployments.py":
    {{py}} -m services.runner {{args}}
