"""Counts the XLA programs a process builds, from JAX's monitoring events.

Every ``jax.jit`` call with new shapes or static arguments builds an executable: JAX records
``/jax/core/compile/backend_compile_duration`` for it, whether it was compiled or read from the
persistent compilation cache (``/jax/compilation_cache/cache_hits`` then). A training loop whose
count keeps rising after its first step recompiles (shapes that change from step to step,
pitfall 7 of ``shared/docs/pitfalls.md``); the trainer logs the counts every step.
"""

from __future__ import annotations

from typing import Any

from jax import monitoring

BUILD_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


class CompileCounter:
    """While open: ``programs`` built (compiled or read from the persistent cache),
    ``cache_hits`` (of those, read from the cache) and ``seconds`` spent building them."""

    def __init__(self) -> None:
        self.programs = 0
        self.cache_hits = 0
        self.seconds = 0.0

    def _on_duration(self, event: str, duration: float, **_: Any) -> None:
        if event == BUILD_EVENT:
            self.programs += 1
            self.seconds += duration

    def _on_event(self, event: str, **_: Any) -> None:
        if event == CACHE_HIT_EVENT:
            self.cache_hits += 1

    def __enter__(self) -> CompileCounter:
        monitoring.register_event_duration_secs_listener(self._on_duration)
        monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc: object) -> None:
        monitoring.unregister_event_duration_listener(self._on_duration)
        monitoring.unregister_event_listener(self._on_event)

    def figures(self) -> dict[str, float]:
        """``compiled_programs``, ``compilation_cache_hits``, ``compile_seconds`` so far."""
        return {"compiled_programs": float(self.programs),
                "compilation_cache_hits": float(self.cache_hits),
                "compile_seconds": self.seconds}
