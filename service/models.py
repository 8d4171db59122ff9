"""Several models in one service: which are configured, which are loaded, and for how long.

Each ASR_MODELS entry (service.config.ModelEntry) is one engine (service.engine.Engine) with its own
lifecycle: preloaded at startup (readiness waits for those), or loaded on its first request (which
waits up to ASR_MODEL_LOAD_WAIT_SECONDS, else 503 with Retry-After); unloaded after `ttl_seconds`
unused, by the admin (DELETE /v1/models/{id}), or to make room within
ASR_MODEL_MEMORY_BUDGET_BYTES, least recently used first, never one with work in flight and never
a preloaded one (readiness depends on those). Without
ASR_MODELS the single model of ASR_BACKEND / ASR_MODEL is the one entry, preloaded, answering to
ASR_MODEL_ALIASES: nothing changes for a one-model service.

Requests name a model by id or alias; a name no entry has is 404 `model_not_found`, and metrics
label models by their configured id only, never by what a client sent. Loads run one at a time
(in a thread), so the memory a load adds is measured as what the process grew by meanwhile: RSS on
CPU, this process's GPU memory (NVML) on CUDA.

A request holds a `Lease` on its model from before decoding to its answer: the model is not
unloaded under it, and `in_flight` says whether it may be evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.backends import model_label
from service.config import ModelEntry
from service.engine import Engine
from service.errors import ModelBudgetError, ModelBusyError, ModelNotFoundError, NotReadyError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from service.backends.base import Backend
    from service.config import Settings
    from service.engine import BackendFactory
    from service.metrics import Metrics

log = logging.getLogger(__name__)
SHADOW_ID = "shadow"  # the entry ASR_SHADOW_MODEL makes when it names a model, not an entry


def shadow_model_id(settings: Settings) -> str | None:
    """The entry that shadow scoring transcribes with: ASR_SHADOW_MODEL when it names one, else the
    entry made for it (SHADOW_ID); None when shadow scoring is off."""
    shadow = settings.shadow.model
    if shadow is None:
        return None
    named = {n: e.id for e in model_entries(settings) for n in (e.id, *e.aliases)}
    return named.get(shadow, SHADOW_ID)


_RETRY_FAILED_SECONDS = 30.0
LOAD_REASONS = ("preload", "demand", "admin")
UNLOAD_REASONS = ("ttl", "budget", "admin")  # an on-demand model that failed to load is tried again after this


def model_entries(settings: Settings) -> tuple[ModelEntry, ...]:
    """The configured entries: ASR_MODELS, or the one model of ASR_BACKEND / ASR_MODEL; plus the
    shadow model's entry when ASR_SHADOW_MODEL names a model rather than an entry."""
    ms = settings.model
    if ms.models is not None:
        entries = ms.models
        if not any(e.preload for e in entries):  # the default model is always ready at startup
            entries = (entries[0].model_copy(update={"preload": True}), *entries[1:])
    else:
        aliases = tuple(a.strip() for a in ms.model_aliases.split(",") if a.strip())
        entries = (
            ModelEntry(
                id=model_label(settings),
                backend=ms.backend,
                model=ms.model,
                device=ms.device,
                compute_type=ms.compute_type,
                aliases=tuple(a for a in aliases if a != model_label(settings)),
                preload=True,
            ),
        )
    shadow = settings.shadow.model
    names = {n for e in entries for n in (e.id, *e.aliases)}
    if shadow is not None and shadow not in names:
        entries = (*entries, ModelEntry(id=SHADOW_ID, backend=settings.shadow.backend, model=shadow))
    return entries


def entry_settings(settings: Settings, entry: ModelEntry) -> Settings:
    """The settings an engine of `entry` is built with: the model group is the entry's."""
    group = settings.model.model_copy(
        update={
            "backend": entry.backend,
            "model": entry.model,
            "device": entry.device,
            "compute_type": entry.compute_type,
            "model_label": entry.id,
        }
    )
    return settings.model_copy(update={"model": group})


@dataclass(frozen=True)
class ModelStatus:
    """One entry as /v1/models shows it."""

    id: str
    backend: str
    aliases: tuple[str, ...]
    state: str  # unloaded, loading, ready, failed
    preload: bool
    ttl_seconds: float | None
    memory_bytes: int | None
    load_seconds: float | None
    in_flight: int
    idle_seconds: float | None


class Lease:
    """A request's hold on a loaded model, from before decoding to its answer.

    The model is not unloaded while the lease is held, nor while a worker thread still runs on it:
    a request that timed out answers at once, but its thread stops only at the engine's next
    segment, so the hold ends when both the request has released it and no thread is `running`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backend: Backend = engine.ready_backend()
        engine.hold()
        self._lock = threading.Lock()
        self._threads = 0
        self._released = False
        self._ended = False

    @contextlib.contextmanager
    def running(self) -> Iterator[Backend]:
        """Mark a worker thread as using the model for the block (call in that thread)."""
        with self._lock:
            self._threads += 1
        try:
            yield self.backend
        finally:
            with self._lock:
                self._threads -= 1
                end = self._released and not self._threads and not self._ended
                self._ended = self._ended or end
            if end:
                self.engine.let_go()

    def release(self) -> None:
        """The request is done with the model (its threads may still be finishing)."""
        with self._lock:
            self._released = True
            end = not self._threads and not self._ended
            self._ended = self._ended or end
        if end:
            self.engine.let_go()


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics, factory: BackendFactory | None = None) -> None:
        self.settings = settings
        self._metrics = metrics
        self.entries = model_entries(settings)
        self.engines: dict[str, Engine] = {
            e.id: Engine(entry_settings(settings, e), metrics, factory, entry=e) for e in self.entries
        }
        self._names = {name: e.id for e in self.entries for name in (e.id, *e.aliases)}
        self.default = self.engines[self.entries[0].id]
        draft = settings.streams.stream_partial_model
        if draft is not None and draft not in self._names:
            raise ValueError(f"ASR_STREAM_PARTIAL_MODEL names {draft!r}, which no ASR_MODELS entry is")
        self._load_lock = asyncio.Lock()  # one load at a time: its memory is what the process grew by
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._preloads: list[asyncio.Task[None]] = []
        for engine in self.engines.values():
            engine.publish_state()
            # Every (model, reason) series exists from the start, at zero, so rate() and alerts see them.
            for reason in LOAD_REASONS:
                metrics.model_loads.labels(engine.id, reason)
            for reason in UNLOAD_REASONS:
                metrics.model_unloads.labels(engine.id, reason)

    # ---- names ----------------------------------------------------------------------------

    def resolve(self, name: str | None) -> Engine:
        """The engine a request names (None: the default); raises ModelNotFoundError (404)."""
        if name is None:
            return self.default
        found = self._names.get(name)
        if found is None:
            raise ModelNotFoundError(name, sorted(self.engines))
        return self.engines[found]

    @property
    def ready(self) -> bool:
        """Whether every preloaded model is ready (what /readyz reports)."""
        return all(e.state == "ready" for e in self.engines.values() if e.entry.preload)

    def statuses(self) -> list[ModelStatus]:
        now = time.monotonic()
        return [
            ModelStatus(
                id=e.entry.id,
                backend=e.entry.backend,
                aliases=e.entry.aliases,
                state=e.state,
                preload=e.entry.preload,
                ttl_seconds=e.entry.ttl_seconds,
                memory_bytes=e.memory_bytes if e.state == "ready" else None,
                load_seconds=e.load_seconds,
                in_flight=e.in_flight,
                idle_seconds=round(now - e.last_used, 1) if e.state == "ready" and not e.in_flight else None,
            )
            for e in self.engines.values()
        ]

    # ---- start and stop --------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading the preloaded models in the background."""
        for engine in self.engines.values():
            if engine.entry.preload:
                self._preloads.append(asyncio.create_task(self._load(engine, "preload"), name=f"load-{engine.id}"))

    async def preloaded(self) -> None:
        """Wait until every preload has finished (ready or failed)."""
        await asyncio.gather(*(asyncio.shield(t) for t in self._preloads), return_exceptions=True)

    async def stop(self) -> None:
        """Let loads under way finish (so their memory is released too), then unload everything."""
        await asyncio.gather(*self._preloads, *self._loads.values(), return_exceptions=True)
        for engine in self.engines.values():
            await asyncio.to_thread(engine.close)
            engine.publish_state()
        self._metrics.ready.set(0)

    # ---- leases ----------------------------------------------------------------------------

    async def acquire(self, engine: Engine, wait: float | None = None) -> Lease:
        """A lease on `engine`, loading it first when it is not loaded (waiting up to `wait`
        seconds, ASR_MODEL_LOAD_WAIT_SECONDS by default). Raises NotReadyError (503 with
        Retry-After) while a preload runs, after a failure, or when the load takes longer;
        ModelBudgetError (503) when the budget cannot make room."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.settings.model.model_load_wait_seconds if wait is None else wait)
        while True:
            # No await between this check and the lease: an unload cannot slip in between.
            if engine.state == "ready":
                return Lease(engine)
            if engine.entry.preload and engine.state == "loading" and engine.id not in self._loads:
                raise NotReadyError("the model is still loading")  # startup: readiness says when
            if engine.state == "failed" and not self._may_retry(engine):
                raise NotReadyError(engine.public_error or "the model failed to load", retry_after=30)
            task = self._loads.get(engine.id) or self._demand(engine)
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                await asyncio.wait_for(asyncio.shield(task), left)
            except TimeoutError:
                raise NotReadyError(
                    f"model {engine.id} is loading; retry shortly", retry_after=self._retry_after(engine)
                ) from None
            task.result()  # a ModelBudgetError is the answer as it is
            if engine.state == "failed":
                raise NotReadyError(engine.public_error or "the model failed to load", retry_after=30)
            # Ready now, or unloaded again meanwhile (evicted, the admin): look again.

    def _demand(self, engine: Engine) -> asyncio.Task[None]:
        task = asyncio.create_task(self._load(engine, "demand"), name=f"load-{engine.id}")
        self._loads[engine.id] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._loads.pop(engine.id, None)
            if not finished.cancelled():
                finished.exception()  # retrieved here too: a waiter may have given up

        task.add_done_callback(done)
        return task

    def _may_retry(self, engine: Engine) -> bool:
        return not engine.entry.preload and time.monotonic() - engine.failed_at >= _RETRY_FAILED_SECONDS

    def _retry_after(self, engine: Engine) -> int:
        # The last load's time is the best guess of the next one's.
        return max(1, min(300, math.ceil(engine.load_seconds or 10.0)))

    # ---- loading and unloading ---------------------------------------------------------------

    async def load(self, name: str) -> Engine:
        """Load a model now (the admin's POST /v1/models/{id}); returns its engine, ready or failed."""
        engine = self.resolve(name)
        if engine.state != "ready":
            await self._load(engine, "admin")
        return engine

    async def unload(self, name: str, reason: str = "admin") -> bool:
        """Unload a model that no request holds; returns whether it was unloaded. Raises
        ModelBusyError (409) when work is in flight on it, or when it is preloaded (readiness
        depends on it: restart with another ASR_MODELS to drop it)."""
        engine = self.resolve(name)
        if engine.entry.preload:
            raise ModelBusyError(f"model {engine.id} is preloaded: readiness depends on it, so it stays loaded")
        async with self._load_lock:
            return await self._unload(engine, reason, busy_is_error=True)

    async def _unload(self, engine: Engine, reason: str, busy_is_error: bool = False) -> bool:
        if engine.state != "ready":
            return False
        if engine.in_flight:
            if busy_is_error:
                raise ModelBusyError(f"model {engine.id} has {engine.in_flight} requests in flight; retry")
            return False
        engine.state = "unloading"  # before the await: no lease is taken on it from here on
        await asyncio.to_thread(engine.close)
        await asyncio.to_thread(_return_freed_memory)
        self._metrics.model_unloads.labels(engine.id, reason).inc()
        self._publish(engine)
        log.info("model %s unloaded (%s)", engine.id, reason)
        return True

    def _publish(self, engine: Engine) -> None:
        engine.publish_state()
        self._metrics.ready.set(1 if self.ready else 0)

    async def _load(self, engine: Engine, reason: str) -> None:
        async with self._load_lock:
            if engine.state == "ready":
                return
            # Room for what it took last time (or its files' size), before it loads ...
            await self._make_room(engine, engine.memory_bytes or _size_on_disk(engine))
            engine.state = "loading"
            engine.publish_state()
            _return_freed_memory()  # else heap freed by an unload is reused unseen, and the growth reads 0
            before = _memory_in_use(engine.device_hint)
            await asyncio.to_thread(engine.load)
            if engine.state == "ready":
                engine.memory_bytes = max(0, _memory_in_use(engine.device_hint) - before) or engine.memory_bytes
                try:
                    # ... and for what it measured once loaded, the first time its size was a guess.
                    await self._make_room(engine, engine.memory_bytes)
                except ModelBudgetError:
                    await self._unload(engine, "budget")
                    raise
                self._metrics.model_loads.labels(engine.id, reason).inc()
            self._publish(engine)

    async def _make_room(self, engine: Engine, need: int) -> None:
        """Unload idle models, least recently used first, until `need` bytes for `engine` fit the
        budget beside the others; raises ModelBudgetError when the models holding the rest are busy."""
        budget = self.settings.model.model_memory_budget_bytes
        if not budget:
            return
        loaded = [e for e in self.engines.values() if e.state == "ready" and e is not engine]
        used = sum(e.memory_bytes for e in loaded)
        # Preloaded models are pinned: readiness depends on them.
        for victim in sorted((e for e in loaded if not e.entry.preload), key=lambda e: e.last_used):
            if used + need <= budget:
                break
            if await self._unload(victim, "budget"):
                used -= victim.memory_bytes
        if used + need > budget and used > 0:
            raise ModelBudgetError(
                f"model {engine.id} (about {need >> 20} MiB) does not fit the memory budget of {budget >> 20} MiB "
                f"beside the {used >> 20} MiB of preloaded models and models with work in flight; retry shortly"
            )

    async def unload_idle_forever(self) -> None:
        """Unload models unused for longer than their ttl_seconds; until cancelled. Looks a few
        times per shortest TTL (every 5 s at most), so a model goes within a quarter of its TTL."""
        ttls = [e.ttl_seconds for e in self.entries if e.ttl_seconds is not None]
        if not ttls:
            return
        interval = min(5.0, max(0.05, min(ttls) / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for engine in self.engines.values():
                ttl = engine.entry.ttl_seconds
                idle = engine.state == "ready" and not engine.in_flight and now - engine.last_used
                if ttl is not None and idle and idle > ttl:
                    async with self._load_lock:
                        await self._unload(engine, "ttl")


def _memory_in_use(device: str) -> int:
    """Bytes this process holds where models live: GPU memory (NVML) on CUDA; on CPU the C heap's
    bytes in use (glibc's mallinfo2), else its RSS.

    The heap's count is what a load really keeps: measured on this CPU it read +53-55 MB for every
    load of tiny.en and +89-92 MB for base, back to +0-2 MB after an unload, while RSS growth read
    anywhere from 43 to 130 MB for tiny.en, depending on what earlier unloads had left in the heap.
    """
    if device == "cuda":
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            try:
                pid = os.getpid()
                total = 0
                for i in range(pynvml.nvmlDeviceGetCount()):
                    handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                        if proc.pid == pid:
                            total += proc.usedGpuMemory or 0
                return total
            finally:
                pynvml.nvmlShutdown()
    heap = _glibc_heap_in_use()
    if heap is not None:
        return heap
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # ctypes' layout declaration
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _glibc_heap_in_use() -> int | None:
    """Bytes allocated with malloc and not freed (small blocks and mmapped ones), or None off glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _return_freed_memory() -> None:
    """Give memory freed to the C heap back to the OS (glibc's malloc_trim): an unloaded model
    otherwise leaves tens of MB of RSS behind, and where the heap cannot be counted (not glibc)
    RSS growth is the measure."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@functools.cache
def _libc() -> Any:
    """glibc, with mallinfo2's result type declared; None where there is none."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
    return libc


def _size_on_disk(engine: Engine) -> int:
    """A first guess of what a model never loaded here will take: the size of its files."""
    path = Path(engine.entry.model)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0
