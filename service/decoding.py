"""Decoding uploads off the event loop, a bounded number at a time, measured.

Decoding is CPU work that competes with inference for the same cores: unbounded, a handful of
uploads that decode slowly (hours of compressed silence) made a 5 s clip wait over a minute. So
uploads decode on their own small thread pool (ASR_DECODE_WORKERS); the rest wait their turn,
holding the admission ticket they took, so decoding counts against the 429 limit. Time spent
decoding is `asr_decode_seconds`, decodes running now `asr_decodes_in_flight`.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from service.audio import DecodedAudio, decode_audio, decode_pcm
from service.backends.base import Cancelled
from service.cancellation import SHUTTING_DOWN
from service.errors import error_for_cancellation

if TYPE_CHECKING:
    from service.cancellation import CancelToken
    from service.metrics import Metrics


@dataclass(frozen=True)
class EncodedAudio:
    """An upload in any container and codec ffmpeg reads (a seekable file)."""

    file: IO[bytes]


@dataclass(frozen=True)
class RawPcm:
    """Raw 16 kHz mono s16le samples (whisper-asr-webservice's encode=false)."""

    file: IO[bytes]


AudioSource = EncodedAudio | RawPcm | DecodedAudio


class DecodePool:
    """Decode uploads on `workers` threads, with a cap on length and a place to spill long audio."""

    def __init__(self, workers: int, max_seconds: float, spill_seconds: float, metrics: Metrics) -> None:
        self.workers = workers
        self.max_seconds = max_seconds
        self.spill_seconds = spill_seconds
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    async def decode(self, source: AudioSource, token: CancelToken, keep_seconds: float | None = None) -> DecodedAudio:
        """Return 16 kHz mono samples of `source` (only its first `keep_seconds` when given).

        Raises the audio errors (400/413/415/422/507), or the answer for a cancelled `token`.
        """
        if isinstance(source, DecodedAudio):
            return source
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._decode_file, source, token, keep_seconds)
        stop = asyncio.ensure_future(token.wait())
        try:
            waits: list[asyncio.Future[Any]] = [future, stop]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The caller went away (its task was cancelled at shutdown): the thread stops at its
            # next frame, and what it still returns or raises is collected, never left behind.
            token.cancel(SHUTTING_DOWN)
            future.add_done_callback(_close_late_result)
            raise
        finally:
            stop.cancel()
        if future.done() and not token.cancelled:
            try:
                return future.result()
            except Cancelled:
                raise error_for_cancellation(token.reason) from None
        # Cancelled while waiting for a decode thread (the job never starts) or while decoding
        # (the thread stops at its next frame); a result that still arrives is freed.
        future.add_done_callback(_close_late_result)
        raise error_for_cancellation(token.reason)

    def _decode_file(
        self, source: EncodedAudio | RawPcm, token: CancelToken, keep_seconds: float | None
    ) -> DecodedAudio:
        if token.cancelled:
            raise Cancelled()
        self._metrics.decodes_in_flight.inc()
        started = time.perf_counter()
        decode = decode_pcm if isinstance(source, RawPcm) else decode_audio
        try:
            return decode(
                source.file,
                max_seconds=self.max_seconds,
                spill_seconds=self.spill_seconds,
                cancel=token.event,
                keep_seconds=keep_seconds,
            )
        finally:
            self._metrics.decode_seconds.observe(time.perf_counter() - started)
            self._metrics.decodes_in_flight.dec()

    async def probe(self, source: EncodedAudio) -> None:
        """Check an upload before it is accepted for later: that it is audio, plausible, decodable
        at its start and not declared too long. Raises the audio errors (400/413/415/422)."""

        def check() -> None:
            decode_audio(source.file, max_seconds=self.max_seconds, keep_seconds=1.0, enforce_length=True).close()
            source.file.seek(0)

        await asyncio.get_running_loop().run_in_executor(self._executor, check)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _close_late_result(future: asyncio.Future[DecodedAudio]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
