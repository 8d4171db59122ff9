"""deploy/kubernetes: each overlay renders with `kubectl kustomize`; every object validates
against the Kubernetes API schemas (kubernetes-validate) or its CRD's schema (the Prometheus
Operator's and KEDA's, as cloudcoil's generated models); the PrometheusRule holds exactly the
rule groups of deploy/prometheus/rules and promtool accepts them; a rolling update's timings
cover the longest request; the autoscaling targets follow the worker count; and a policy scan
(checkov) finds nothing that is not skipped with a reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from kubernetes_validate.utils import latest_version

from deploy.kubernetes.generate import BASE, OUTPUTS, rule_groups
from service.config import iter_env_vars

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
CRDS: dict[str, type[pydantic.BaseModel]] = {
    "ServiceMonitor": ServiceMonitor,
    "PrometheusRule": PrometheusRule,
    "ScaledObject": ScaledObject,
}
# The oldest Kubernetes still supported upstream when this was written, and the newest schemas.
VERSIONS = ("1.32", latest_version())
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The objects of each overlay, and of the CPU overlay with the prometheus-adapter HPA in
    place of KEDA (the documented alternative)."""
    hpa = tmp_path_factory.mktemp("cpu-hpa")
    (hpa / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(KUBE / "base", hpa)],
                "components": [os.path.relpath(KUBE / "components" / "hpa", hpa)],
                "patches": [{"path": "workers.yaml"}],
            }
        )
    )
    shutil.copy(KUBE / "overlays" / "cpu" / "workers.yaml", hpa / "workers.yaml")
    return {
        "cpu": _kustomize(KUBE / "overlays" / "cpu"),
        "gpu": _kustomize(KUBE / "overlays" / "gpu"),
        "cpu-hpa": _kustomize(hpa),
    }


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


def _unknown_fields(given: Any, kept: Any, path: str = "") -> list[str]:
    """Keys of `given` that the CRD's model did not keep: fields its schema does not have, which
    the API server would drop without a word."""
    if isinstance(given, dict) and isinstance(kept, dict):
        missing = [f"{path}.{k}" for k in given if k not in kept]
        return missing + [f for k in given if k in kept for f in _unknown_fields(given[k], kept[k], f"{path}.{k}")]
    if isinstance(given, list) and isinstance(kept, list):
        return [
            f for i, (a, b) in enumerate(zip(given, kept, strict=False)) for f in _unknown_fields(a, b, f"{path}[{i}]")
        ]
    return []


def _schema_errors(obj: dict[str, Any]) -> list[str]:
    if obj["kind"] in CRDS:
        try:
            model = CRDS[obj["kind"]].model_validate(obj)
        except pydantic.ValidationError as error:
            return [str(error)]
        kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        return [f"unknown field {f}" for f in _unknown_fields(obj, kept)]
    errors = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{version}: {error.message} at {list(error.path)}")
    return errors


def test_generated_objects_equal_their_sources() -> None:
    for name, render in OUTPUTS.items():
        assert (BASE / name).read_text() == render(), f"run `python -m deploy.kubernetes.generate` ({name})"


def test_every_object_validates_against_its_schema(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objects in rendered.items():
        kinds = {o["kind"] for o in objects}
        assert kinds >= {"Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"}, overlay
        assert ("HorizontalPodAutoscaler" in kinds) != ("ScaledObject" in kinds), overlay  # one autoscaler
        for obj in objects:
            assert _schema_errors(obj) == [], f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"


def test_the_validation_catches_mistakes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = json.loads(json.dumps(_one(rendered["cpu"], "Deployment")))
    deployment["spec"]["replica"] = 2  # a typo
    assert _schema_errors(deployment)
    monitor = json.loads(json.dumps(_one(rendered["cpu"], "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("intervall" in e for e in _schema_errors(monitor))
    scaled = json.loads(json.dumps(_one(rendered["cpu"], "ScaledObject")))
    scaled["spec"]["minReplicaCount"] = "two"
    assert _schema_errors(scaled)


def test_the_prometheus_rule_holds_exactly_the_rule_groups_and_promtool_accepts_them(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    for objects in rendered.values():
        assert _one(objects, "PrometheusRule")["spec"]["groups"] == rule_groups()
    groups = _one(rendered["cpu"], "PrometheusRule")["spec"]["groups"]
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)) and "asr-availability" in names
    rules = tmp_path / "from-prometheusrule.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    out = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboards_reach_the_grafana_sidecar(rendered: dict[str, list[dict[str, Any]]]) -> None:
    maps = [o for o in rendered["cpu"] if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]]
    shipped = {p.name: json.loads(p.read_text()) for p in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")}
    assert {name: json.loads(text) for m in maps for name, text in m["data"].items()} == shipped
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert len(json.dumps(m)) < 1_000_000  # the ConfigMap size limit is 1 MiB


def _settings(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The service's settings ConfigMap (kustomize may suffix its name)."""
    [data] = [o["data"] for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "asr-config"]
    return dict(data)


def test_every_setting_is_one_the_service_reads(rendered: dict[str, list[dict[str, Any]]]) -> None:
    known = {env for env, _, _ in iter_env_vars()}
    for overlay, objects in rendered.items():
        container = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        names = set(_settings(objects)) | {e["name"] for e in container["env"]}
        assert names <= known, f"{overlay}: unknown {names - known}"


def test_a_rolling_update_drops_no_request(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objects in rendered.items():
        settings = _settings(objects)
        pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
        [container] = pod["containers"]
        longest_request = float(settings["ASR_REQUEST_TIMEOUT_SECONDS"]) + float(
            settings["ASR_TIMEOUT_PER_AUDIO_SECOND"]
        ) * float(settings["ASR_MAX_AUDIO_SECONDS"])
        grace = float(settings["ASR_SHUTDOWN_GRACE_SECONDS"])
        pause = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert grace >= longest_request, overlay  # what was admitted finishes
        assert pod["terminationGracePeriodSeconds"] > pause + grace, overlay  # before the kill
        rollout = _one(objects, "Deployment")["spec"]["strategy"]["rollingUpdate"]
        assert rollout["maxUnavailable"] == 0, overlay
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a large-v3 load
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert pod["securityContext"]["runAsNonRoot"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp", "/var/lib/asr/data"} <= mounts  # the only places the service writes
        assert settings["ASR_QUALITY_DIR"].startswith("/var/lib/asr/data/")
        assert settings["ASR_JOBS_DIR"].startswith("/var/lib/asr/data/")


def test_gpu_pods_ask_for_a_gpu_where_the_operator_put_one(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pod = _one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert _settings(rendered["gpu"])["ASR_DEVICE"] == "cuda"
    assert "nvidia.com/gpu" not in json.dumps(_one(rendered["cpu"], "Deployment"))


def test_autoscaling_targets_follow_the_workers_and_their_queries_parse(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    queries = []
    for overlay in ("cpu", "gpu"):
        workers = float(_settings(rendered[overlay])["ASR_WORKERS"])
        triggers = {t["name"]: t["metadata"] for t in _one(rendered[overlay], "ScaledObject")["spec"]["triggers"]}
        # Scale out when demand passes 75% of a pod's workers (docs/kubernetes.md).
        assert float(triggers["worker-demand"]["threshold"]) == pytest.approx(0.75 * workers), overlay
        queries += [t["query"] for t in triggers.values()]
    hpa = _one(rendered["cpu-hpa"], "HorizontalPodAutoscaler")["spec"]["metrics"]
    demand = next(
        m["pods"]["target"]["averageValue"] for m in hpa if m["pods"]["metric"]["name"] == "asr_worker_demand"
    )
    assert demand == "1500m"
    # promtool parses each query as a recording rule's expression.
    rules = [{"record": f"keda:query_{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "keda.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "keda", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_policy_scan_finds_nothing_unexplained(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    assert CHECKOV.exists(), "checkov is installed by `make test` into .venv-tools"
    for overlay, objects in rendered.items():
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objects))
    # --skip-download: no call home; offline, checkov knows no severities, so any failure fails.
    out = subprocess.run(
        [str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(out.stdout)
    results = report if isinstance(report, list) else [report]
    failed = [(f["check_id"], f["resource"]) for r in results for f in r["results"]["failed_checks"]]
    assert failed == []
    skipped = [f for r in results for f in r["results"]["skipped_checks"]]
    assert skipped and all((f["check_result"].get("suppress_comment") or "").strip() for f in skipped)
    assert sum(r["summary"]["passed"] for r in results) > 100
