"""The engine's lifecycle: load it in the background, warm it up, say whether it is ready.

A load failure is kept in two forms: the full message (paths, hub errors) for the log and for
callers holding the admin token, and a public one that names only the model's label and the
kind of failure, since /readyz and 503 answers are readable by anyone who can reach the port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from service.backends import load_backend, model_label
from service.backends.base import SAMPLE_RATE, Backend, TranscribeOptions
from service.errors import NotReadyError

if TYPE_CHECKING:
    from service.config import Settings
    from service.metrics import Metrics

log = logging.getLogger(__name__)

BackendFactory = Callable[["Settings"], Backend]


class Engine:
    """Holds the loaded backend; `state` is loading, ready or failed."""

    def __init__(self, settings: Settings, metrics: Metrics, factory: BackendFactory | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._factory = factory or load_backend
        self.backend: Backend | None = None
        self.state = "loading"
        self.error: str | None = None  # the full reason, for the log and the admin

    @property
    def public_error(self) -> str | None:
        """The load failure without details a stranger should not read (paths, hosts)."""
        if self.error is None:
            return None
        kind = self.error.split(":", 1)[0]
        return f"model {model_label(self.settings)} failed to load ({kind}); the service log says why"

    def load(self) -> None:
        """Load the engine and run a short warm-up inference; blocking, run in a thread.

        Leaves state "ready", or "failed" with `error` set; never raises.
        """
        started = time.perf_counter()
        try:
            backend = self._factory(self.settings)
            warm = np.random.default_rng(0).normal(0.0, 0.01, SAMPLE_RATE).astype(np.float32)
            backend.transcribe(warm, TranscribeOptions(language=_warmup_language(backend)))
        except Exception as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.error)
            return
        self.backend = backend
        self.metrics.model_info.labels(backend.name, backend.model, backend.device, backend.compute_type).set(1)
        self.metrics.model_load_seconds.set(time.perf_counter() - started)
        observe = getattr(backend, "set_batch_observer", None)
        if observe is not None:
            observe(self.metrics.batch_size.labels(backend.name, backend.model).observe)
        self.state = "ready"
        self.metrics.ready.set(1)
        log.info("model %s (%s) ready in %.1f s", backend.model, backend.name, time.perf_counter() - started)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        self.metrics.ready.set(0)

    def ready_backend(self) -> Backend:
        """Return the loaded engine; raises NotReadyError while loading or after a failure."""
        if self.backend is None:
            if self.state == "failed":
                raise NotReadyError(self.public_error or "the model failed to load")
            raise NotReadyError("the model is still loading")
        return self.backend


def _warmup_language(backend: Backend) -> str | None:
    languages = backend.capabilities.languages
    return "en" if "en" in languages else (min(languages) if languages else None)
