"""deploy/ checked with the real tools (promtool, amtool, docker-compose) and by reading it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.grafana.dashboards import DASHBOARDS, THRESHOLDS, render
from service.metrics import (
    QUEUE_WAIT_ALERT_SECONDS,
    QUEUE_WAIT_BUCKETS,
    REQUEST_RTF_BUCKETS,
    REQUEST_RTF_P95_ALERT,
    REQUEST_RTF_P99_ALERT,
    RTF_ALERT,
    RTF_BUCKETS,
    STREAM_FINALISATION_SLO_SECONDS,
    STREAM_LATENCY_BUCKETS,
)
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
RULES = yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())
ALERTS = [rule for group in RULES["groups"] for rule in group["rules"]]
RECORDING = [
    rule
    for group in yaml.safe_load((PROM / "rules" / "recording.yml").read_text())["groups"]
    for rule in group["rules"]
]


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, timeout=300)


# ---- Prometheus ------------------------------------------------------------------------------


def test_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    shutil.copytree(PROM, tmp_path / "prometheus")
    check = run("promtool", "check", "config", tmp_path / "prometheus" / "prometheus.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    lint = run("promtool", "check", "rules", "--lint=all", "--lint-fatal", *sorted((PROM / "rules").glob("*.yml")))
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_every_rule_unit_test_passes() -> None:
    # One promtool per file, side by side: the week-long drift files take most of the time.
    files = sorted(p.name for p in (PROM / "tests").glob("*.yml"))
    runs = [
        subprocess.Popen(["promtool", "test", "rules", name], cwd=PROM / "tests", stdout=subprocess.PIPE, text=True)
        for name in files
    ]
    for name, process in zip(files, runs, strict=True):
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0 and "SUCCESS" in out, f"{name}:\n{out}"


def _rule_tests() -> list[dict[str, Any]]:
    cases = []
    for path in (PROM / "tests").glob("*.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = _rule_tests()
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    names = {a["alert"] for a in ALERTS}
    assert names - firing == set(), "alerts without a firing test"
    assert names - quiet - {"Watchdog"} == set(), "alerts without a test that shows them quiet"
    assert firing | quiet <= names, "tests of alerts that do not exist"


def _anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", markdown.read_text(), re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_alert_says_how_bad_what_happened_and_where_to_look() -> None:
    anchors = _anchors(ROOT / "docs" / "runbook.md")
    uids = set(DASHBOARDS)
    # Alerts about something missing have no value worth printing.
    no_value = {
        "ASRServiceDown",
        "ASRServiceAbsent",
        "ASRNotReady",
        "Watchdog",
        "NodeExporterAbsent",
        "AlertmanagerTargetAbsent",
        "ScrapeTargetDown",
        "DCGMExporterDown",
        "ASRNoQualitySamples",
    }
    for alert in ALERTS:
        labels, notes = alert["labels"], alert["annotations"]
        assert labels["severity"] in {"critical", "warning", "none"}, alert["alert"]
        assert labels["service"] in {"asr", "gpu", "host", "monitoring"}, alert["alert"]
        assert {"summary", "description", "runbook_url", "dashboard_url"} <= set(notes), alert["alert"]
        if alert["alert"] not in no_value:
            assert "$value" in notes["summary"] + notes["description"], alert["alert"]
        base, _, anchor = notes["runbook_url"].partition("#")
        assert base.endswith("/docs/runbook.md") and anchor in anchors, (alert["alert"], anchor)
        assert notes["dashboard_url"].split("/d/")[1].split("/")[0] in uids, alert["alert"]
    assert {a["labels"]["severity"] for a in ALERTS if a["alert"] == "Watchdog"} == {"none"}


def test_recording_rules_are_named_level_metric_operations() -> None:
    for rule in RECORDING:
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def _alert(name: str) -> str:
    return " ".join(a["expr"] for a in ALERTS if a["alert"] == name)


def test_alert_thresholds_are_bucket_boundaries_and_drawn_on_the_panels() -> None:
    assert f"> {REQUEST_RTF_P95_ALERT:g}" in _alert("ASRSlowResponses")
    assert f"> {REQUEST_RTF_P99_ALERT:g}" in _alert("ASRSlowResponsesTail")
    assert {REQUEST_RTF_P95_ALERT, REQUEST_RTF_P99_ALERT} <= set(REQUEST_RTF_BUCKETS)
    assert f"> {QUEUE_WAIT_ALERT_SECONDS:g}" in _alert("ASRQueueWaitHigh")
    assert QUEUE_WAIT_ALERT_SECONDS in QUEUE_WAIT_BUCKETS
    assert f"> {RTF_ALERT:g}" in _alert("ASRSlowerThanRealTime") and RTF_ALERT in RTF_BUCKETS
    assert f"> {STREAM_FINALISATION_SLO_SECONDS:g}" in _alert("ASRStreamFinalisationSlow")
    assert STREAM_FINALISATION_SLO_SECONDS in STREAM_LATENCY_BUCKETS
    expected = {
        "request_rtf_p95": ("ASRSlowResponses", "> {:g}"),
        "request_rtf_p99": ("ASRSlowResponsesTail", "> {:g}"),
        "workers_busy_ratio": ("ASRWorkersSaturated", "> {:g}"),
        "stream_finalisation_p95_seconds": ("ASRStreamFinalisationSlow", "> {:g}"),
        "gpu_power_ratio": ("GPUPowerNearLimit", "> {:g}"),
        "rtf": ("ASRSlowerThanRealTime", "> {:g}"),
        "queue_saturation": ("ASRQueueSaturated", "> {:g}"),
        "queue_wait_p95_seconds": ("ASRQueueWaitHigh", "> {:g}"),
        "rejected_ratio": ("ASRRejectingRequests", "> {:g}"),
        "wer": ("ASRWordErrorRateHigh", "> {:g}"),
        "cer": ("ASRCharacterErrorRateHigh", "> {:g}"),
        "quality_job_age_seconds": ("ASRQualityJobStale", "> {:g}"),
        "gpu_memory_ratio": ("GPUMemoryHigh", "> {:g}"),
        "gpu_temperature_celsius": ("GPUTooHot", "> {:g}"),
        "host_memory_available_ratio": ("HostMemoryLow", "< {:.2f}"),
        "disk_available_ratio": ("HostDiskAlmostFull", "< {:g}"),
    }
    for key, (alert, pattern) in expected.items():
        assert pattern.format(THRESHOLDS[key]) in _alert(alert), key
    assert "14.4 * 0.005" in _alert("ASRErrorBudgetBurnFast") and THRESHOLDS["slo_fast_burn_ratio"] == 14.4 * 0.005
    drawn = {
        step["value"]
        for name in DASHBOARDS
        for panel in json.loads(render(name))["panels"]
        for step in panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
        if step["value"] is not None
    }
    assert set(THRESHOLDS.values()) <= drawn


# ---- Grafana ---------------------------------------------------------------------------------


def test_committed_dashboards_are_what_the_code_generates() -> None:
    for name in DASHBOARDS:
        committed = (DEPLOY / "grafana" / "dashboards" / f"{name}.json").read_text()
        assert committed == render(name), f"regenerate with: python -m deploy.grafana.dashboards ({name})"


def _panels(name: str) -> list[dict[str, Any]]:
    return [p for p in json.loads(render(name))["panels"] if p["type"] != "row"]


def test_dashboards_have_stable_uids_a_datasource_variable_and_the_panels_asked_for() -> None:
    loaded = {name: json.loads(render(name)) for name in DASHBOARDS}
    assert [d["uid"] for d in loaded.values()] == list(DASHBOARDS)
    for dashboard in loaded.values():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}"
                for target in panel["targets"]:
                    assert target["datasource"]["uid"] == "${datasource}"
                    assert (
                        "rate(" not in target["expr"]
                        or "[$__rate_interval]" in target["expr"]
                        or "[1" in target["expr"]
                    )
    titles = {name: " | ".join(p["title"] for p in _panels(name)).lower() for name in DASHBOARDS}
    for name, words in {
        "asr-overview": ["requests", "success", "latency", "real-time factor", "queue", "gpu memory"],
        "asr-performance": [
            "by route",
            "by language",
            "backend and model",
            "queue wait",
            "in flight",
            "429",
            "jobs by state",
            "webhook deliveries",
        ],
        "asr-quality": ["word error rate", "character error rate", "samples kept", "pending", "last succeeded"],
        "asr-resources": [
            "gpu utilisation",
            "gpu memory",
            "gpu temperature",
            "power",
            "cpu",
            "memory available",
            "disk",
            "network",
        ],
    }.items():
        haystack = titles[name] + " ".join(t["legendFormat"] for p in _panels(name) for t in p["targets"])
        for word in words:
            assert word in haystack, (name, word)


def test_grafana_provisioning_points_at_the_prometheus_and_the_dashboards() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    scrape = yaml.safe_load((PROM / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert (ds["uid"], ds["type"], ds["jsonData"]["timeInterval"]) == ("prometheus", "prometheus", scrape)
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/asr.yml").read_text())["providers"][0]
    assert provider["allowUiUpdates"] is False
    compose = (ROOT / "docker-compose.yml").read_text()
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in compose


# ---- Alertmanager ----------------------------------------------------------------------------


@pytest.fixture
def alertmanager_config(tmp_path: Path) -> Path:
    """The project's alertmanager.yml with its absolute paths pointed into tmp_path."""
    shutil.copytree(DEPLOY / "alertmanager" / "templates", tmp_path / "templates")
    (tmp_path / "smtp_password").write_text("x\n")
    text = (DEPLOY / "alertmanager" / "alertmanager.yml").read_text()
    text = text.replace("/etc/alertmanager/templates", str(tmp_path / "templates"))
    text = text.replace("/run/secrets/smtp_password", str(tmp_path / "smtp_password"))
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    return path


def test_amtool_accepts_the_config_and_routes_by_severity(alertmanager_config: Path) -> None:
    check = run("amtool", "check-config", alertmanager_config)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    for labels, receiver in (
        (["severity=critical", "alertname=ASRServiceDown", "service=asr"], "email-critical"),
        (["severity=warning", "alertname=ASRSlowResponses", "service=asr"], "email-warnings"),
        # Mail about failing mail goes out another way, and the other way's failures by mail.
        (["severity=critical", "alertname=AlertmanagerNotificationsFailing", "integration=email"], "fallback-webhook"),
        (["severity=critical", "alertname=AlertmanagerNotificationsFailing", "integration=webhook"], "email-critical"),
        (["severity=none", "alertname=Watchdog"], "null"),
    ):
        routed = run(
            "amtool",
            "config",
            "routes",
            "test",
            f"--config.file={alertmanager_config}",
            f"--verify.receivers={receiver}",
            *labels,
        )
        assert routed.returncode == 0, (labels, routed.stdout + routed.stderr)


def test_email_templates_render(alertmanager_config: Path) -> None:
    for template in ("asr.subject", "asr.text", "asr.html"):
        rendered = run(
            "amtool",
            "template",
            "render",
            f"--template.glob={alertmanager_config.parent}/templates/*.tmpl",
            f'--template.text={{{{ template "{template}" . }}}}',
        )
        assert rendered.returncode == 0, rendered.stderr
    assert "Runbook" in rendered.stdout or "runbook" in rendered.stdout.lower()


def test_no_secret_is_committed_and_grouping_is_as_documented() -> None:
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    assert "smtp_auth_password" not in config["global"]
    assert config["global"]["smtp_auth_password_file"].startswith("/run/secrets/")
    assert config["route"]["group_by"] == ["alertname", "service"]
    assert all(e["send_resolved"] for r in config["receivers"] for e in r.get("email_configs", []))
    down = next(r for r in config["inhibit_rules"] if r["source_matchers"] == ['alertname="ASRServiceDown"'])
    assert down["target_matchers"] == ['service="asr"', 'alertname!="ASRServiceDown"']
    assert down["equal"] == ["job", "instance"]  # one instance down says nothing of the others


# ---- docker-compose and the image ---------------------------------------------------------------


def test_compose_file_is_valid_and_has_the_stack() -> None:
    result = run("docker-compose", "--profile", "gpu", "config", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {
        "asr",
        "asr-gpu",
        "prometheus",
        "alertmanager",
        "grafana",
        "node-exporter",
        "dcgm-exporter",
        "mailpit",
    }
    gpu = services["asr-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and services["dcgm-exporter"]["profiles"] == ["gpu"]
    assert services["asr"]["profiles"] == ["cpu"] and "COMPOSE_PROFILES=cpu" in (ROOT / ".env").read_text()
    for name in ("asr", "asr-gpu", "prometheus", "alertmanager", "grafana", "mailpit"):
        assert "healthcheck" in services[name], name
    assert set(config["volumes"]) == {"asr-data", "prometheus-data", "alertmanager-data", "grafana-data"}
    assert services["prometheus"]["image"].endswith(":v2.42.0")
    assert services["alertmanager"]["image"].endswith(":v0.25.0")
    # What answers without a login faces only this host: Prometheus's lifecycle API, Alertmanager's
    # silences, the mail catcher; Grafana asks for a login unless told otherwise.
    for name in ("prometheus", "alertmanager", "grafana", "mailpit"):
        for port in services[name]["ports"]:  # docker-compose 1.29 renders "IP:HOST:CONTAINER/tcp"
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    # node-exporter measures the host: its network and processes, not a container's.
    node = services["node-exporter"]
    assert node["network_mode"] == "host" and node["pid"] == "host"
    listen = next(a for a in node["command"] if a.startswith("--web.listen-address="))
    assert not listen.endswith("=0.0.0.0:9100") and listen.endswith(":9100")
    node_targets = yaml.safe_load((PROM / "targets" / "node.yml").read_text())[0]["targets"]
    assert node_targets == ["host.docker.internal:9100"]
    assert "host.docker.internal:host-gateway" in services["prometheus"]["extra_hosts"]


def test_dockerfile_is_multistage_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 3 and "ARG BASE_IMAGE=python:3.11-slim" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "embedded_model_path('embedded:base'" in text  # the model is baked in at build time
