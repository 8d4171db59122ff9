"""Webhooks: a POST to a job's `webhook_url` when it ends, signed, retried, counted.

The body is JSON (id, status, duration, language, text, result_url, error). With
ASR_WEBHOOK_SECRET set, two headers let the receiver check it came from here and is fresh:
    X-ASR-Timestamp: <unix seconds>
    X-ASR-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>
A delivery that fails (connection error, timeout, a non-2xx answer) is retried after
ASR_WEBHOOK_RETRY_SECONDS, doubling each time (10 minutes at most), up to ASR_WEBHOOK_MAX_ATTEMPTS;
the state lives in the job table, so retries survive a restart. Outcomes are counted in
asr_webhook_deliveries_total{outcome}.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from service.errors import BadRequestError, shown

if TYPE_CHECKING:
    from service.config import WebhookSettings
    from service.jobs.store import JobRecord, JobStore
    from service.metrics import Metrics

log = logging.getLogger(__name__)
MAX_DELAY_SECONDS = 600.0


def check_url(url: str, settings: WebhookSettings) -> str:
    """Return `url` if webhooks may go there; raises BadRequestError (422) otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequestError(f"webhook_url {shown(url)} is not an http(s) URL", param="webhook_url")
    allowed = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
    if allowed and parts.hostname.lower() not in allowed:
        raise BadRequestError(
            f"webhook_url host {shown(parts.hostname)} is not in ASR_WEBHOOK_ALLOWED_HOSTS", param="webhook_url"
        )
    return url


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-ASR-Signature value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookSender:
    def __init__(self, store: JobStore, settings: WebhookSettings, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics

    async def deliver_due(self, payload: Any) -> int:
        """Try every webhook whose time has come; `payload(job)` builds its body. Returns how many were tried."""
        due = self.store.due_webhooks(time.time())
        if not due:
            return 0
        async with httpx.AsyncClient(timeout=self.settings.timeout_seconds, follow_redirects=False) as client:
            for job in due:
                await self._attempt(client, job, payload(job))
        return len(due)

    async def _attempt(self, client: httpx.AsyncClient, job: JobRecord, payload: dict[str, Any]) -> None:
        assert job.webhook_url is not None
        body = json.dumps(payload, ensure_ascii=False).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-ASR-Timestamp": timestamp, "User-Agent": "asr-service"}
        if self.settings.secret is not None:
            headers["X-ASR-Signature"] = sign(self.settings.secret.get_secret_value(), timestamp, body)
        try:
            response = await client.post(job.webhook_url, content=body, headers=headers)
            error = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        attempts = job.webhook_attempts + 1
        if error is None:
            self.store.webhook_attempted(job.id, "delivered", None, None)
            self.metrics.webhook_deliveries.labels("delivered").inc()
        elif attempts >= self.settings.max_attempts:
            self.store.webhook_attempted(job.id, "failed", None, error)
            self.metrics.webhook_deliveries.labels("failed").inc()
            log.warning("webhook for job %s failed for good after %d attempts: %s", job.id, attempts, error)
        else:
            delay = min(MAX_DELAY_SECONDS, self.settings.retry_seconds * 2 ** (attempts - 1))
            self.store.webhook_attempted(job.id, "pending", time.time() + delay, error)
            self.metrics.webhook_deliveries.labels("retried").inc()
            log.info("webhook for job %s failed (%s); retry in %.1f s", job.id, error, delay)
