"""The embedded stack's plumbing shared by the CLI, the simulator, tests and benchmarks."""

from __future__ import annotations

from core import queue, secrets, sending, store
from core.providers import factory
from core.settings import reset_settings


def reset_core_caches() -> None:
    """Forget every cached client, binding and setting, so core code talks to the stack now in place."""
    store.unbind()
    queue.reset_clients()
    secrets.reset()
    factory.reset()
    sending.reset()
    reset_settings()
