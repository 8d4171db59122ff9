"""Working on jobs: claim one, decode it once, transcribe it window by window, resume after a crash.

Each job's audio is cut into windows of ASR_JOBS_WINDOW_SECONDS at quiet points (planned once,
stored, so a restart cuts it the same way). Every window goes through Pipeline.transcribe at BATCH
priority, so jobs share the workers with requests by the scheduler's rules (requests first; jobs
keep a worker free while requests arrive and get a share of the turns; on a quiet service they
use every worker). The first window runs alone to find the language; the others then run side by
side, as many as the scheduler lets through. Each finished window is committed at once: a job
stopped anywhere (SIGKILL, a drain, a lost lease) resumes from its finished windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from service.audio import DecodedAudio
from service.backends.base import Transcript
from service.cancellation import JOB_CANCELLED, SHUTTING_DOWN, CancelToken
from service.decoding import EncodedAudio
from service.errors import ServiceError, ShuttingDownError
from service.formats import Result
from service.jobs.store import TERMINAL, JobStore, new_owner
from service.jobs.webhook import WebhookSender
from service.keys import ANONYMOUS
from service.languages import join_texts
from service.metrics import JOB_STATES
from service.pipeline import RequestOptions, Work
from service.scheduler import Priority
from service.speakers.linking import link_parts, relabel, stored_voices, window_voices
from service.windowing import plan_windows, shift_segment

if TYPE_CHECKING:
    from service.backends.base import Segment
    from service.config import Settings
    from service.jobs.store import JobRecord
    from service.key_limits import KeyUsage
    from service.metrics import Metrics
    from service.pipeline import Pipeline

log = logging.getLogger(__name__)
_RENEW_SECONDS = 20.0
_SWEEP_SECONDS = 300.0


class LeaseLost(Exception):
    """Another process took the job, or it was cancelled or deleted meanwhile."""


class JobRunner:
    def __init__(
        self, store: JobStore, pipeline: Pipeline, settings: Settings, metrics: Metrics, usage: KeyUsage | None = None
    ) -> None:
        """`usage`: where a job's audio is charged to the key that submitted it, once it is decoded."""
        self.store = store
        self.usage = usage
        self.pipeline = pipeline
        self.settings = settings
        self.metrics = metrics
        self.owner = new_owner()
        self.webhooks = WebhookSender(store, settings.webhook, metrics)
        self._wake = asyncio.Event()
        self._running: dict[str, CancelToken] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._last_sweep = 0.0
        self._last_renew = 0.0
        self._delivering: asyncio.Task[int] | None = None
        pipeline.on_drain(self._drain)

    # ---- control -------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; returns whether it was active. A window running here
        stops at its next segment; one running in another process stops at its next window."""
        if not self.store.finish(job_id, "cancelled"):
            return False
        token = self._running.get(job_id)
        if token is not None:
            token.cancel(JOB_CANCELLED)
        self._refresh_gauges()
        return True

    def _drain(self) -> None:
        # Take no new job or window; windows under way get the grace period, then are stopped.
        self._draining = True

    async def run_forever(self) -> None:
        """Claim and work on jobs, deliver webhooks, apply retention; until cancelled."""
        try:
            while True:
                await self._tick()
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation
                # that stops the runner when it lands as the timeout expires (shutdown then hangs).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            tasks = [*self._tasks, *([self._delivering] if self._delivering is not None else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _tick(self) -> None:
        # Each step on its own: one that fails (the database away for a moment) is logged, and
        # the others still run; claims, the sweep and the gauges never wait for webhooks.
        for step in (self._claim, self._renew, self._deliver, self._sweep, self._gauges):
            try:
                await step()
            except Exception:
                log.exception("job runner: %s failed", step.__name__.strip("_"))

    async def _claim(self) -> None:
        ready = self.pipeline.state == "ready"
        while ready and not self._draining and len(self._running) < self.settings.jobs.concurrency:
            job = await asyncio.to_thread(self.store.claim, self.owner, set(self._running))
            if job is None:
                break
            self._running[job.id] = CancelToken()
            task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _renew(self) -> None:
        now = time.monotonic()
        if now - self._last_renew > _RENEW_SECONDS:
            self._last_renew = now
            for job_id in list(self._running):
                await asyncio.to_thread(self.store.renew, job_id, self.owner)

    async def _deliver(self) -> None:
        """Start a round of due webhooks unless one is under way (a receiver may take its timeout)."""
        if self._delivering is not None and not self._delivering.done():
            return
        previous = self._delivering
        self._delivering = asyncio.create_task(self.webhooks.deliver_due(self.payload), name="webhooks")
        if previous is not None and not previous.cancelled() and previous.exception() is not None:
            log.error("job runner: webhooks failed", exc_info=previous.exception())

    async def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep > _SWEEP_SECONDS:
            self._last_sweep = now
            await asyncio.to_thread(self.store.sweep, self.settings.jobs.retention_hours * 3600)

    async def _gauges(self) -> None:
        await asyncio.to_thread(self._refresh_gauges)

    def refresh_gauges(self) -> None:
        """Set asr_jobs from the job table (at startup, so the series exist from the first scrape)."""
        self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        counts = self.store.counts()
        for state in JOB_STATES:
            self.metrics.jobs.labels(state).set(counts.get(state, 0))

    # ---- one job ---------------------------------------------------------------------------

    async def _run(self, job: JobRecord) -> None:
        token = self._running[job.id]
        try:
            await self._transcribe(job, token)
        except LeaseLost:
            log.info("job %s: no longer ours (cancelled, deleted or taken over)", job.id)
        except ServiceError as exc:
            if token.reason == JOB_CANCELLED:
                log.info("job %s cancelled", job.id)
            elif token.reason == SHUTTING_DOWN or self._draining:
                await asyncio.to_thread(self.store.release, job.id, self.owner)
                log.info("job %s paused for shutdown; it resumes from its finished windows", job.id)
            elif await asyncio.to_thread(self.store.holds, job.id, self.owner):
                self._fail(job, exc.code, exc.message)
            else:
                log.info("job %s: cancelled or deleted while it started", job.id)
        except Exception as exc:
            # A cancel can land between the claim and the first read of the upload, which it
            # removes: that job was cancelled, not failed.
            if await asyncio.to_thread(self.store.holds, job.id, self.owner):
                log.exception("job %s failed", job.id)
                self._fail(job, "internal_error", f"the job failed: {type(exc).__name__}")
            else:
                log.info("job %s: cancelled or deleted while it started (%s)", job.id, type(exc).__name__)
        finally:
            self._running.pop(job.id, None)
            self.wake()

    def _fail(self, job: JobRecord, code: str, message: str) -> None:
        # Blocking (SQLite), but only once per failed job.
        webhook = job.webhook_url is not None
        self.store.finish(job.id, "failed", error=(code, message), webhook=webhook, owner=self.owner)
        log.warning("job %s failed: %s", job.id, message)

    async def _transcribe(self, job: JobRecord, token: CancelToken) -> None:
        path = self.store.upload_path(job.id)
        upload = await asyncio.to_thread(open, path, "rb")
        try:
            audio = await self.pipeline.decode(EncodedAudio(upload), token)
        finally:
            upload.close()
        try:
            windows = job.windows
            if windows is None:
                windows = await asyncio.to_thread(lambda: list(plan_windows(audio, self.settings.jobs.window_seconds)))
                await asyncio.to_thread(self.store.plan, job.id, audio.duration, windows)
                if self.usage is not None:  # once per job: a resumed job has its plan already
                    self.usage.charge(job.owner or ANONYMOUS, audio.duration)
            done = {index for index, *_ in await asyncio.to_thread(self.store.windows, job.id)}
            options = RequestOptions(**job.options)
            language = job.language or options.language
            todo = [i for i in range(len(windows)) if i not in done]
            if todo and language is None:
                # The first window decides the language for all (as the whole file would have).
                first = await self._window(job, audio, windows, todo.pop(0), options, token)
                language = first.language
                await asyncio.to_thread(self.store.set_language, job.id, language, first.language_probability)
            elif todo and job.language is None and language is not None:
                await asyncio.to_thread(self.store.set_language, job.id, language, 1.0)
            options = replace(options, language=language)
            await asyncio.gather(*(self._window(job, audio, windows, i, options, token) for i in todo))
        finally:
            audio.close()
        await asyncio.to_thread(self._succeed, job)

    async def _window(
        self,
        job: JobRecord,
        audio: DecodedAudio,
        windows: list[tuple[int, int]],
        index: int,
        options: RequestOptions,
        token: CancelToken,
    ) -> Transcript:
        """Transcribe one window through the pipeline and record it; returns its transcript."""
        if self._draining:
            raise ShuttingDownError()
        start, stop = windows[index]
        part = DecodedAudio.from_array(audio.read(start, stop))
        if options.diarize:  # a window may hold fewer speakers than the job: its minimum is the job's
            options = replace(options, min_speakers=None)
        outcome = await self.pipeline.transcribe(Work(options, part, priority=Priority.BATCH, token=token))
        outcome.audio.close()
        transcript = outcome.result.transcript
        offset = start / audio.sample_rate
        segments = [shift_segment(seg, seg.id, offset) for seg in transcript.segments]
        speakers = window_voices(outcome.diarization) if outcome.diarization is not None else None
        recorded = await asyncio.to_thread(
            self.store.add_window,
            job.id,
            self.owner,
            index,
            offset,
            stop / audio.sample_rate,
            segments,
            transcript.text,
            speakers,
        )
        if not recorded:
            token.cancel(JOB_CANCELLED)
            raise LeaseLost()
        return transcript

    def _succeed(self, job: JobRecord) -> None:
        if self.store.finish(job.id, "succeeded", webhook=job.webhook_url is not None, owner=self.owner):
            self.metrics.job_duration.observe(time.time() - job.created_at)
            log.info("job %s succeeded", job.id)

    # ---- results ---------------------------------------------------------------------------

    def result(self, job: JobRecord) -> Result:
        """The finished job as one transcript (segments renumbered across windows; a diarized
        job's speakers linked across them)."""
        segments: list[Segment] = []
        texts = []
        windows = self.store.windows(job.id)
        labels = self._linked(job, [index for index, *_ in windows])
        for index, _, window_segments, text in windows:
            for seg in relabel(window_segments, labels.get(index, {})):
                segments.append(replace(seg, id=len(segments)))
            texts.append(text)
        language = job.language or "unknown"
        transcript = Transcript(
            join_texts(texts, language), language, job.language_probability or 0.0, job.duration or 0.0, segments
        )
        model = RequestOptions(**job.options).model or self.pipeline.resolve_model(None)
        name = next((s.backend for s in self.pipeline.models() if s.id == model), "unknown")
        elapsed = (job.finished_at or time.time()) - (job.started_at or job.created_at)
        return Result(transcript, name, model, elapsed)

    def _linked(self, job: JobRecord, indices: list[int]) -> dict[int, dict[str, str]]:
        """For a diarized job, each window's labels -> the job's, linked by voice print in window
        order (the same answer however often the job was resumed); {} for any other job."""
        if not job.options.get("diarize"):
            return {}
        stored = self.store.window_speakers(job.id)
        parts = [stored_voices(stored.get(i, [])) for i in indices]
        limit = job.options.get("max_speakers")
        links = link_parts(parts, self.settings.diarization.match_threshold, limit)
        return dict(zip(indices, links, strict=True))

    def payload(self, job: JobRecord) -> dict[str, Any]:
        """The webhook body: what ended, how, and where the result is."""
        body: dict[str, Any] = {
            "id": job.id,
            "status": job.status,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
            "duration": job.duration,
            "language": job.language,
            "result_url": f"/v1/jobs/{job.id}/result",
            "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        }
        if job.status == "succeeded":
            body["text"] = self.result(job).transcript.text
        assert job.status in TERMINAL
        return body
