"""One model's lifecycle: load it (in a worker thread), warm it up, say whether it is ready, unload.

A load failure is kept in two forms: the full message (paths, hub errors) for the log and for
callers holding the admin token, and a public one that names only the model's label and the
kind of failure, since /readyz and 503 answers are readable by anyone who can reach the port.
Which models exist and when they load or unload is service.models' concern.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from service.backends import load_backend, model_label
from service.backends.base import SAMPLE_RATE, Backend, TranscribeOptions
from service.config import ModelEntry
from service.errors import NotReadyError

if TYPE_CHECKING:
    from service.config import Settings
    from service.metrics import Metrics

log = logging.getLogger(__name__)

BackendFactory = Callable[["Settings"], Backend]
STATES = ("unloaded", "loading", "ready", "unloading", "failed")


class Engine:
    """Holds one entry's backend while it is loaded; `state` is one of STATES."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        factory: BackendFactory | None = None,
        entry: ModelEntry | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._factory = factory or load_backend
        self.id = model_label(settings)
        # Without an entry (a one-off engine, e.g. in the benchmarks) the engine is its own preload.
        self.entry = entry or ModelEntry(id=self.id, model=settings.model.model, preload=True)
        self.backend: Backend | None = None
        self.state = "loading" if self.entry.preload else "unloaded"
        self.error: str | None = None  # the full reason, for the log and the admin
        self.failed_at = 0.0
        self.in_flight = 0  # requests holding a lease (service.models.Lease), changed under _hold_lock
        self._hold_lock = threading.Lock()
        self.last_used = time.monotonic()
        self.memory_bytes = 0  # what loading it added to the process (measured by service.models)
        self.load_seconds: float | None = None

    @property
    def device_hint(self) -> str:
        """Where it runs or will run (`cuda` or `cpu`; `auto` counts as cpu until loaded)."""
        if self.backend is not None:
            return "cuda" if self.backend.device.startswith("cuda") else "cpu"
        return "cuda" if self.settings.model.device == "cuda" else "cpu"

    @property
    def public_error(self) -> str | None:
        """The load failure without details a stranger should not read (paths, hosts)."""
        if self.error is None:
            return None
        kind = self.error.split(":", 1)[0]
        return f"model {self.id} failed to load ({kind}); the service log says why"

    def load(self) -> None:
        """Load the engine and run a short warm-up inference; blocking, run in a thread.

        Leaves state "ready", or "failed" with `error` set; never raises.
        """
        started = time.perf_counter()
        self.state, self.error = "loading", None
        try:
            backend = self._factory(self.settings)
            warm = np.random.default_rng(0).normal(0.0, 0.01, SAMPLE_RATE).astype(np.float32)
            backend.transcribe(warm, TranscribeOptions(language=_warmup_language(backend)))
        except Exception as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            self.failed_at = time.monotonic()
            log.error("model %s failed to load: %s", self.id, self.error)
            return
        self.backend = backend
        self.load_seconds = time.perf_counter() - started
        self.metrics.model_info.labels(backend.name, backend.model, backend.device, backend.compute_type).set(1)
        self.metrics.model_load_seconds.labels(self.id).set(self.load_seconds)
        observe = getattr(backend, "set_batch_observer", None)
        if observe is not None:
            observe(self.metrics.batch_size.labels(backend.name, backend.model).observe)
        self.last_used = time.monotonic()
        self.state = "ready"
        log.info("model %s (%s) ready in %.1f s", backend.model, backend.name, self.load_seconds)

    def close(self) -> None:
        """Release the model's memory; the entry stays known (unloaded) and may load again."""
        backend, self.backend = self.backend, None
        if backend is not None:
            self.metrics.model_info.labels(backend.name, backend.model, backend.device, backend.compute_type).set(0)
            backend.close()
        if self.state in ("ready", "unloading"):
            self.state = "unloaded"

    def hold(self) -> None:
        with self._hold_lock:
            self.in_flight += 1

    def let_go(self) -> None:
        """A lease ended (maybe in a worker thread): it counts no more, and the model was just used."""
        with self._hold_lock:
            self.in_flight -= 1
            self.last_used = time.monotonic()

    def publish_state(self) -> None:
        """Set this model's gauges (loaded or not, its memory) from its state."""
        loaded = self.state == "ready"
        self.metrics.model_loaded.labels(self.id).set(1 if loaded else 0)
        self.metrics.model_memory.labels(self.id).set(self.memory_bytes if loaded else 0)

    def ready_backend(self) -> Backend:
        """Return the loaded engine; raises NotReadyError while loading or after a failure."""
        if self.backend is None:
            if self.state == "failed":
                raise NotReadyError(self.public_error or "the model failed to load")
            if self.state == "unloaded":
                raise NotReadyError(f"model {self.id} is not loaded")
            raise NotReadyError("the model is still loading")
        return self.backend


def _warmup_language(backend: Backend) -> str | None:
    languages = backend.capabilities.languages
    return "en" if "en" in languages else (min(languages) if languages else None)
