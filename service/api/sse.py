"""Server-sent events for `stream=true` uploads: each segment as the engine finishes it.

The pipeline runs with an `on_segment` callback (called in the worker thread) that hands segments
to the event loop. The answer becomes an event stream only once the first segment exists: an
upload refused before that (not audio, too long, queue full) still gets its ordinary JSON 4xx.
An error after it is an error event; a client that hangs up cancels the work.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from service.api.uploads import note_outcome, until_disconnected
from service.cancellation import CLIENT_DISCONNECTED
from service.errors import ServiceError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from service.api.uploads import Upload
    from service.backends.base import Segment
    from service.metrics import Metrics
    from service.outcome import Outcome
    from service.pipeline import Pipeline

log = logging.getLogger(__name__)
_DONE = object()


def event(data: dict[str, Any], name: str | None = None) -> str:
    """One SSE event: an optional `event:` name and a JSON `data:` line."""
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def stream(
    request: Any,
    pipeline: Pipeline,
    metrics: Metrics,
    upload: Upload[Any],
    on_segment: Callable[[Segment, int], str],
    on_done: Callable[[Outcome], str],
    on_error: Callable[[ServiceError], str],
) -> StreamingResponse:
    """Run the upload's work and answer with its segments as events (`on_segment(segment, index)`),
    then `on_done(outcome)`. Raises the ServiceError of work that fails before its first segment."""
    work = upload.work
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def hand_over(seg: Segment) -> None:  # in the worker thread
        loop.call_soon_threadsafe(queue.put_nowait, seg)

    work.on_segment = hand_over
    task = asyncio.ensure_future(pipeline.transcribe(work))
    task.add_done_callback(lambda _: queue.put_nowait(_DONE))
    try:
        first = await until_disconnected(request.receive, work.token, queue.get())
    except BaseException:
        await _abandon(task, upload)
        raise
    finished: dict[str, Outcome] = {}
    if first is _DONE:  # done before any segment was passed on (no speech, or an engine that cannot stream)
        await upload.close()
        finished["outcome"] = task.result()  # raises the error that ended it

    async def events() -> AsyncIterator[str]:
        completed = False
        try:
            if "outcome" in finished:
                for index, seg in enumerate(finished["outcome"].result.transcript.segments):
                    yield on_segment(seg, index)
            else:
                item, index = first, 0
                while item is not _DONE:
                    yield on_segment(item, index)
                    index += 1
                    item = await queue.get()
                finished["outcome"] = task.result()
            completed = True
            note_outcome(request, finished["outcome"])
            yield on_done(finished["outcome"])
        except ServiceError as exc:
            completed = True
            yield on_error(exc)
        finally:
            if not completed:  # the client went away mid-stream
                metrics.rejected.labels("client_disconnected").inc()
            await _abandon(task, upload)

    async def sample() -> None:
        # Sampled like any request, once the last event is out.
        if "outcome" in finished:
            await pipeline.keep_sample(finished["outcome"], request.scope.get("state", {}).get("request_id"))

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        events(), media_type="text/event-stream", headers=headers, background=BackgroundTask(sample)
    )


async def _abandon(task: asyncio.Future[Outcome], upload: Upload[Any]) -> None:
    """Stop work nobody waits for, and free what it holds."""
    if not task.done():
        upload.work.token.cancel(CLIENT_DISCONNECTED)
        task.add_done_callback(_discard)
    await upload.close()


def _discard(task: asyncio.Future[Outcome]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().audio.close()
