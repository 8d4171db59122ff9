"""The monitoring stack for real: the service (Whisper tiny.en), Debian's Prometheus 2.42,
Alertmanager 0.25 and node-exporter with the project's configs, and an SMTP sink on loopback.

Prometheus scrapes and evaluates every second here (the rules and routes are the project's;
only target addresses, the SMTP host and Alertmanager's group timings are test-local).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from deploy.grafana.dashboards import DASHBOARDS, render
from deploy.local_stack import LocalStack, free_port
from service.gpu import GpuCollector
from service.metrics import Metrics
from tests.conftest import ROOT, SENTENCES, Server, serve
from tests.test_gpu import fake_pynvml

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": "Bearer stack-admin"}
PROM = ROOT / "deploy" / "prometheus"


@dataclass
class Env:
    stack: LocalStack
    tmp: Path
    asr_port: int
    service_env: dict[str, str]
    server: Server | None = None

    def query(self, expr: str) -> dict[str, Any]:
        r = httpx.post(self.stack.url("prometheus") + "/api/v1/query", data={"query": expr}, timeout=30)
        body: dict[str, Any] = r.json()
        return body


def _wait(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not happen in {timeout} s")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("stack")
    port = free_port()
    service_env = {"ASR_QUALITY_SAMPLE_RATE": "1", "ASR_QUALITY_NORMALIZER": "basic", "ASR_ADMIN_TOKEN": "stack-admin"}
    timing = {"group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serve(service_env, tmp, port=port))
        local = stack.enter_context(
            LocalStack(tmp / "stack", [f"127.0.0.1:{port}"], "1s", "1s", timing, resend_delay="2s")
        )
        e = Env(local, tmp, port, service_env, server)
        # Real traffic: every sentence, one upload that is not audio; references and scoring.
        for name in SENTENCES:
            path = speech_dir / f"{name}.mp3"
            assert (
                httpx.post(
                    server.url + "/transcribe", files={"file": (path.name, path.read_bytes())}, timeout=60
                ).status_code
                == 200
            )
        assert httpx.post(server.url + "/transcribe", files={"file": ("x.txt", b"not audio" * 50)}).status_code == 415
        fox = (speech_dir / "fox.mp3").read_bytes()
        job = httpx.post(server.url + "/v1/jobs", files={"file": ("fox.mp3", fox)}).json()
        _wait(lambda: httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()["status"] == "succeeded", 60, "the job")
        samples = _wait(lambda: httpx.get(server.url + "/v1/samples", headers=ADMIN).json()["items"], 30, "samples")
        for sample in samples:
            httpx.put(
                server.url + f"/v1/samples/{sample['id']}/reference", json={"text": SENTENCES["fox"]}, headers=ADMIN
            )
        assert httpx.post(server.url + "/v1/samples/score", headers=ADMIN, timeout=60).json()["scored"] == len(samples)
        # The quality recording rules run every minute: wait for their first evaluation.
        _wait(lambda: e.query('job_language:asr_quality_wer:ratio1d{job="asr"}')["data"]["result"], 90, "WER rule")
        yield e


def test_every_target_is_up(env: Env) -> None:
    targets = httpx.get(env.stack.url("prometheus") + "/api/v1/targets").json()["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        "asr": "up",
        "node": "up",
        "alertmanager": "up",
        "prometheus": "up",
    }


_RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")


def _names_in(expr: str) -> set[str]:
    """Metric and recording-rule names a PromQL expression uses."""
    recorded = set(_RECORDED.findall(expr))
    plain = _RECORDED.sub(" ", expr)
    return recorded | set(re.findall(r"\b(?:asr|node|process|DCGM|prometheus|alertmanager)_[A-Za-z0-9_]+\b", plain))


def _rule_exprs() -> list[str]:
    return [
        rule["expr"]
        for name in ("alerts.yml", "recording.yml")
        for group in yaml.safe_load((PROM / "rules" / name).read_text())["groups"]
        for rule in group["rules"]
    ]


def _exported(url: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(httpx.get(url).text):
        names.update(s.name for s in family.samples)
        names.add(family.name)
    return names


def test_every_metric_the_rules_and_dashboards_use_exists(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    exprs = _rule_exprs() + [
        t["expr"] for name in DASHBOARDS for p in json.loads(render(name))["panels"] for t in p.get("targets", [])
    ]
    used = set().union(*map(_names_in, exprs))
    assert env.server is not None
    exported = _exported(env.server.url + "/metrics")
    for service in ("node", "alertmanager", "prometheus"):
        exported |= _exported(env.stack.url(service) + "/metrics")
    # What the service defines but this host cannot show: GPU readings (NVML, mapped from a
    # fake at the import boundary), and metrics whose labels appear with their first event.
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake_pynvml(0))
    registry = CollectorRegistry()
    registry.register(GpuCollector(lambda: {0}))
    metrics = Metrics(registry)
    for family in registry.collect():
        exported |= {
            family.name,
            family.name + "_total",
            family.name + "_bucket",
            family.name + "_sum",
            family.name + "_count",
        }
    assert metrics.registry is registry
    recorded = {
        r["record"]
        for g in yaml.safe_load((PROM / "rules" / "recording.yml").read_text())["groups"]
        for r in g["rules"]
    }
    # dcgm-exporter's default counters (etc/default-counters.csv): no GPU to run it here.
    dcgm = {
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_XID_ERRORS",
    }
    missing = used - exported - recorded - dcgm
    assert missing == set(), f"used but exported by nothing: {sorted(missing)}"


# Panels that have no data on a CPU host running faster-whisper, and why.
EMPTY_HERE = {
    "GPU": "no GPU on this host",
    "Mean GPU batch size": "batching runs on CUDA, or on a minute of audio or more; the traffic here is short",
    "Emotions and sound events (SenseVoice)": "the backend is faster-whisper",
    "Character error rate by language (zh, yue, ja, ko)": "no Chinese, Japanese or Korean samples",
    "7 days ago": "no data a week old",
    "{{codec}} {{sample_rate}} Hz last week": "no data a week old",
    "Disagreement with the shadow model": "no shadow model configured (tests/test_quality_shadow_health.py runs one)",
    "samples shadowed / h": "no shadow model configured",
}


def _expected_empty(title: str, legend: str, expr: str) -> bool:
    return (
        "DCGM_" in expr
        or ("asr_gpu_" in expr and "asr_gpu_available" not in expr)
        or title in EMPTY_HERE
        or legend in EMPTY_HERE
        or "reference_chars" in expr
    )


def test_every_dashboard_query_runs_on_prometheus_and_service_panels_have_data(env: Env) -> None:
    failures, empty = [], []
    for name in DASHBOARDS:
        dashboard = json.loads(render(name))
        queries = [
            (p["title"], t["legendFormat"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])
        ]
        queries += [
            (
                "variable " + v["name"],
                "",
                v["definition"].replace("label_values(", "group by (instance) (").replace(", instance)", ")"),
            )
            for v in dashboard["templating"]["list"]
            if v["type"] == "query"
        ]
        for title, legend, expr in queries:
            concrete = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
            body = env.query(concrete)
            if body["status"] != "success":
                failures.append((name, title, body.get("error")))
            elif not body["data"]["result"] and not _expected_empty(title, legend, expr):
                empty.append((name, title, legend))
    assert failures == []
    assert empty == [], "service panels without data"


def test_the_watchdog_reaches_alertmanager_and_no_inbox(env: Env) -> None:
    def watchdog() -> list[dict[str, Any]]:
        alerts = httpx.get(env.stack.url("alertmanager") + "/api/v2/alerts").json()
        return [a for a in alerts if a["labels"]["alertname"] == "Watchdog"]

    [alert] = _wait(watchdog, 30, "Watchdog in Alertmanager")
    assert alert["receivers"] == [{"name": "null"}] and alert["status"]["state"] == "active"
    assert env.stack.mail is not None
    assert not [m for m in env.stack.mail.messages if "Watchdog" in str(m["Subject"])]


def test_a_stopped_service_sends_an_alert_email_then_a_resolved_one(env: Env) -> None:
    assert env.server is not None and env.stack.mail is not None
    instance = f"127.0.0.1:{env.asr_port}"
    env.server.process.terminate()
    env.server.process.wait(timeout=30)
    firing = env.stack.mail.wait_for(
        lambda m: "[FIRING" in str(m["Subject"]) and "ASRServiceDown" in str(m["Subject"]), timeout=150
    )
    assert str(firing["Subject"]) == f"[FIRING:1] ASRServiceDown (critical): ASR service {instance} is down"
    assert str(firing["To"]) == "oncall@asr.local" and str(firing["From"]) == "asr-alerts@asr.local"
    text = firing.get_body(preferencelist=("plain",)).get_content()
    assert f"Summary: ASR service {instance} is down" in text
    assert "Runbook: https://github.com/asr-service/asr-service/blob/main/docs/runbook.md#asrservicedown" in text
    assert "Dashboard: http://localhost:3000/d/asr-overview/asr-overview" in text
    html = firing.get_body(preferencelist=("html",)).get_content()
    assert 'href="https://github.com/asr-service/asr-service/blob/main/docs/runbook.md#asrservicedown"' in html

    with serve(env.service_env, env.tmp, port=env.asr_port) as server:
        env.server = server
        resolved = env.stack.mail.wait_for(
            lambda m: "[RESOLVED]" in str(m["Subject"]) and "ASRServiceDown" in str(m["Subject"]), timeout=90
        )
        assert "Resolved:" in resolved.get_body(preferencelist=("plain",)).get_content()
        sent = env.query('alertmanager_notifications_total{integration="email"}')["data"]["result"]
        failed = env.query('alertmanager_notifications_failed_total{integration="email"}')["data"]["result"]
        assert float(sent[0]["value"][1]) >= 1 and float(failed[0]["value"][1]) == 0


def _amtool(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    url = f"--alertmanager.url={env.stack.url('alertmanager')}"
    return subprocess.run(["amtool", *args, url], capture_output=True, text=True, timeout=30, check=True)


def test_an_instance_down_silences_its_own_alerts_only(env: Env) -> None:
    """ASRServiceDown on one instance inhibits that instance's other alerts; another instance's
    alerts and the service-wide SLO page still go out (they used to be silenced too)."""
    end = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    alerts = [
        ["alertname=ASRServiceDown", "severity=critical", "instance=down:8000"],
        ["alertname=ASRNotReady", "severity=critical", "instance=down:8000"],
        ["alertname=ASRNotReady", "severity=critical", "instance=healthy:8000"],
        ["alertname=ASRErrorBudgetBurnFast", "severity=critical"],
        ["alertname=HostMemoryLow", "severity=warning", "service=host", "instance=down:9100"],
    ]
    for labels in alerts:
        service = [] if any(label.startswith("service=") for label in labels) else ["service=asr"]
        _amtool(env, "alert", "add", *labels, *service, "job=asr", f"--end={end}")

    def query(*flags: str) -> set[tuple[str, str]]:
        found = json.loads(_amtool(env, "alert", "query", *flags, "-o", "json", "job=asr").stdout)
        return {(a["labels"]["alertname"], a["labels"].get("instance", "")) for a in found}

    inhibited = _wait(lambda: query("--inhibited") - query(), 20, "an inhibited alert")
    assert inhibited == {("ASRNotReady", "down:8000")}
    active = query()
    assert {("ASRServiceDown", "down:8000"), ("ASRNotReady", "healthy:8000"), ("ASRErrorBudgetBurnFast", "")} <= active
    assert ("HostMemoryLow", "down:9100") in active  # another service's alert is not silenced


def test_failing_email_is_reported_through_the_webhook(env: Env) -> None:
    """A mail saying mail fails would never arrive: it goes to the fallback webhook instead."""
    end = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    _amtool(
        env,
        "alert",
        "add",
        "alertname=AlertmanagerNotificationsFailing",
        "severity=critical",
        "service=monitoring",
        "integration=email",
        f"--end={end}",
        "--annotation=summary=Alertmanager cannot deliver email notifications",
    )
    assert env.stack.webhook is not None
    names = _wait(env.stack.webhook.alert_names, 30, "the webhook call")
    assert "AlertmanagerNotificationsFailing" in names
    assert env.stack.mail is not None
    assert not any("AlertmanagerNotificationsFailing" in str(m["Subject"]) for m in env.stack.mail.messages)
