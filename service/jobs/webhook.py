"""Webhooks: a POST to a job's `webhook_url` when it ends, signed, retried, counted.

The body is JSON (id, status, duration, language, text, result_url, error). With
ASR_WEBHOOK_SECRET set, two headers let the receiver check it came from here and is fresh:
    X-ASR-Timestamp: <unix seconds>
    X-ASR-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>
Where a webhook may go is service.jobs.destinations (checked at submit) and
service.jobs.transport (checked on the resolved address, and pinned to it, at send time).

A delivery that fails is retried after ASR_WEBHOOK_RETRY_SECONDS, doubling each time (10 minutes
at most), up to ASR_WEBHOOK_MAX_ATTEMPTS; one whose URL is malformed or whose address is refused
fails at once (trying again cannot help). The state lives in the job table, so retries survive a
restart. The job view shows why a delivery failed only as a class (ERROR_CLASSES): telling a
client "HTTP 418" from "connection refused" would make the service a port scanner for it; the
details go to the log. Whatever goes wrong in one delivery, even an error nobody foresaw, is that
delivery's failure: the others, and the runner's cycle, go on. Outcomes are counted in
asr_webhook_deliveries_total{outcome}.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx

from service.errors import BadRequestError
from service.jobs.destinations import AddressPolicy, WebhookRefusedError, check_url
from service.jobs.transport import PinnedTransport, RefusedAddressError

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.config import WebhookSettings
    from service.jobs.store import JobRecord, JobStore
    from service.metrics import Metrics

log = logging.getLogger(__name__)
MAX_DELAY_SECONDS = 600.0
# Deliveries in flight at once: a slow receiver delays only its own webhook.
PARALLEL_DELIVERIES = 8
# Why a delivery failed, as a client sees it.
ERROR_CLASSES = ("connection_failed", "timeout", "http_error", "refused_address", "invalid_url", "internal_error")
# Failures that another attempt cannot mend.
_FINAL = ("refused_address", "invalid_url")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-ASR-Signature value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookSender:
    def __init__(self, store: JobStore, settings: WebhookSettings, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.policy = AddressPolicy.from_settings(settings)

    async def deliver_due(self, payload: Callable[[JobRecord], dict[str, Any]]) -> int:
        """Try every webhook whose time has come; `payload(job)` builds its body (in a thread).
        Returns how many were tried. Raises only when the job table cannot be read."""
        due = await asyncio.to_thread(self.store.due_webhooks, time.time())
        if not due:
            return 0
        transport = PinnedTransport(self.policy, resolve_timeout=self.settings.timeout_seconds)
        slots = asyncio.Semaphore(PARALLEL_DELIVERIES)
        async with httpx.AsyncClient(
            transport=transport, timeout=self.settings.timeout_seconds, follow_redirects=False, trust_env=False
        ) as client:

            async def one(job: JobRecord) -> None:
                async with slots:
                    await self._deliver(client, job, payload)

            await asyncio.gather(*(one(job) for job in due))
        return len(due)

    async def _deliver(
        self, client: httpx.AsyncClient, job: JobRecord, payload: Callable[[JobRecord], dict[str, Any]]
    ) -> None:
        """One attempt, recorded; never raises (but for cancellation)."""
        try:
            body = await asyncio.to_thread(payload, job)
            error = await self._send(client, job, body)
        except Exception:
            log.exception("webhook for job %s: the delivery failed unexpectedly", job.id)
            error = "internal_error"
        try:
            await asyncio.to_thread(self._record, job, error)
        except Exception:
            log.exception("webhook for job %s: its outcome could not be recorded; it is tried again", job.id)

    async def _send(self, client: httpx.AsyncClient, job: JobRecord, payload: dict[str, Any]) -> str | None:
        """POST the payload; None when the receiver took it, else the failure's class (the
        details are logged)."""
        url = job.webhook_url
        assert url is not None
        body = json.dumps(payload, ensure_ascii=False).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-ASR-Timestamp": timestamp, "User-Agent": "asr-service"}
        if self.settings.secret is not None:
            headers["X-ASR-Signature"] = sign(self.settings.secret.get_secret_value(), timestamp, body)
        try:
            # Again at send time: the row may predate these checks, or the settings have changed.
            check_url(url, self.settings)
            response = await client.post(url, content=body, headers=headers)
        except (WebhookRefusedError, RefusedAddressError) as exc:
            return _failed(job, "refused_address", exc)
        except (BadRequestError, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return _failed(job, "invalid_url", exc)
        except httpx.TimeoutException as exc:
            return _failed(job, "timeout", exc)
        except (httpx.TransportError, OSError) as exc:
            return _failed(job, "connection_failed", exc)
        if not response.is_success:
            return _failed(job, "http_error", f"HTTP {response.status_code}")
        return None

    def _record(self, job: JobRecord, error: str | None) -> None:
        attempts = job.webhook_attempts + 1
        if error is None:
            self.store.webhook_attempted(job.id, "delivered", None, None)
            self.metrics.webhook_deliveries.labels("delivered").inc()
        elif error in _FINAL or attempts >= self.settings.max_attempts:
            self.store.webhook_attempted(job.id, "failed", None, error)
            self.metrics.webhook_deliveries.labels("failed").inc()
            log.warning("webhook for job %s failed for good after %d attempt(s): %s", job.id, attempts, error)
        else:
            delay = min(MAX_DELAY_SECONDS, self.settings.retry_seconds * 2 ** (attempts - 1))
            self.store.webhook_attempted(job.id, "pending", time.time() + delay, error)
            self.metrics.webhook_deliveries.labels("retried").inc()
            log.info("webhook for job %s failed (%s); retry in %.1f s", job.id, error, delay)


def _failed(job: JobRecord, error: str, detail: BaseException | str) -> str:
    """Log what went wrong for the operator; return the class the client sees."""
    what = detail if isinstance(detail, str) else f"{type(detail).__name__}: {detail}"
    # The URL itself stays out of the log: it may carry the receiver's token.
    log.info("webhook for job %s: %s (%s)", job.id, error, what[:300])
    return error
