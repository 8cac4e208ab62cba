"""The orchestrator's Python client: `Client` (blocking) and `AsyncClient` (asyncio), over JSON-RPC and SSE."""

from orchestrator.client.aio import AsyncClient
from orchestrator.client.protocol import Retries, TaskEvent
from orchestrator.client.sync import Client

__all__ = ["AsyncClient", "Client", "Retries", "TaskEvent"]
