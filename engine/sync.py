"""A small blocking facade over :class:`engine.client.Client`, for scripts and notebooks.

It runs its own event loop in a background thread (an anyio blocking
portal); every method blocks until the async call returns and raises what it
raised. Iterating methods (watching, logs) stay async-only: use ``Client``.

    with SyncClient() as client:
        run = client.create_flow_run("etl/nightly")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack
from datetime import datetime
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from engine.client import Client
from shared.messages import (
    Deleted,
    DeploymentPage,
    FlowRunPage,
    ProposedState,
    ProposeReply,
    RegisterDeployment,
)
from shared.models import Deployment, FlowRun
from shared.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


class SyncClient:
    def __init__(self, settings: Settings | None = None, *, connect_timeout: float = 5.0) -> None:
        self._client = Client(settings, connect_timeout=connect_timeout)
        self._stack = ExitStack()
        self._portal: BlockingPortal | None = None

    def __enter__(self) -> Self:
        self._portal = self._stack.enter_context(start_blocking_portal())
        try:
            self._stack.enter_context(self._portal.wrap_async_context_manager(self._client))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()
        self._portal = None

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._portal is None:
            raise RuntimeError("use the client as `with SyncClient() as client:`")
        return self._portal.call(lambda: fn(*args, **kwargs))

    def create_flow_run(
        self,
        deployment: str | None = None,
        *,
        deployment_id: str | None = None,
        flow_name: str | None = None,
        parameters: dict[str, Any] | None = None,
        name: str | None = None,
        scheduled_start_time: datetime | None = None,
        idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        parent_flow_run_id: str | None = None,
        agentless: bool = False,
    ) -> FlowRun:
        return self._call(
            self._client.create_flow_run,
            deployment,
            deployment_id=deployment_id,
            flow_name=flow_name,
            parameters=parameters,
            name=name,
            scheduled_start_time=scheduled_start_time,
            idempotency_key=idempotency_key,
            tags=tags,
            parent_flow_run_id=parent_flow_run_id,
            agentless=agentless,
        )

    def read_flow_run(self, run_id: str) -> FlowRun:
        return self._call(self._client.read_flow_run, run_id)

    def list_flow_runs(self, **filters: Any) -> FlowRunPage:
        return self._call(self._client.list_flow_runs, **filters)

    def cancel_flow_run(self, run_id: str, *, reason: str | None = None) -> FlowRun:
        return self._call(self._client.cancel_flow_run, run_id, reason=reason)

    def wait_for_flow_run(self, run_id: str) -> FlowRun:
        return self._call(self._client.wait_for_flow_run, run_id)

    def propose_state(
        self,
        run_id: str,
        state: ProposedState,
        *,
        transition_id: str | None = None,
        attempt: int | None = None,
        runner: str | None = None,
        retry: bool = False,
    ) -> ProposeReply:
        return self._call(
            self._client.propose_state,
            run_id,
            state,
            transition_id=transition_id,
            attempt=attempt,
            runner=runner,
            retry=retry,
        )

    def register_deployment(self, deployment: RegisterDeployment) -> Deployment:
        return self._call(self._client.register_deployment, deployment)

    def read_deployment(self, name: str | None = None, *, id: str | None = None) -> Deployment:
        return self._call(self._client.read_deployment, name, id=id)

    def list_deployments(self, **filters: Any) -> DeploymentPage:
        return self._call(self._client.list_deployments, **filters)

    def pause_deployment(self, name: str | None = None, *, id: str | None = None) -> Deployment:
        return self._call(self._client.pause_deployment, name, id=id)

    def resume_deployment(self, name: str | None = None, *, id: str | None = None) -> Deployment:
        return self._call(self._client.resume_deployment, name, id=id)

    def delete_deployment(self, name: str | None = None, *, id: str | None = None) -> Deleted:
        return self._call(self._client.delete_deployment, name, id=id)
