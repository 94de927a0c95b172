"""``runner.consumer``: the orchestrator makes the dispatch consumers runners pull from.

Runners may pull from a consumer and ack its items, but not create or change
one (deploy/nats/auth.conf): one runner with a bad configuration (or bad
intent) would otherwise throttle every runner of its queue. The
configuration is :func:`shared.dispatch.consumer_config`; a runner names only
the subjects it serves.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from shared import names
from shared.dispatch import consumer_config
from shared.messages import DispatchConsumer, DispatchConsumerReply


class Consumers:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def ensure(self, req: DispatchConsumer) -> DispatchConsumerReply:
        """Create the consumer (or bring it back to our configuration); idempotent."""
        config = consumer_config(req.filters)
        await self._js.add_consumer(names.DISPATCH_STREAM, config)
        assert config.durable_name is not None
        return DispatchConsumerReply(stream=names.DISPATCH_STREAM, durable=config.durable_name)
