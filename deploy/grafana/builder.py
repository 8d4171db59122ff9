"""Small builders for Grafana dashboard JSON (schema 39): panels, layout, PromQL snippets."""

from __future__ import annotations

from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ASR = 'job="asr", instance=~"$instance"'


# ---- PromQL ------------------------------------------------------------------------------------


def sel(extra: str = "", base: str = ASR) -> str:
    """A label selector: the dashboard's ASR instances plus `extra` matchers."""
    return "{" + ", ".join(part for part in (base, extra) if part) + "}"


def rate(metric: str, extra: str = "", base: str = ASR) -> str:
    return f"rate({metric}{sel(extra, base)}[$__rate_interval])"


def quantile(q: float, histogram: str, by: str = "", extra: str = "") -> str:
    """histogram_quantile over `histogram`'s buckets, aggregated by `by` (plus le)."""
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) ({rate(histogram + '_bucket', extra)}))"


# ---- panels ------------------------------------------------------------------------------------


def _targets(queries: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
        for i, (expr, legend) in enumerate(queries)
    ]


def _thresholds(threshold: float | None, below_is_bad: bool) -> dict[str, Any]:
    if threshold is None:
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    elif below_is_bad:
        steps = [{"color": "red", "value": None}, {"color": "green", "value": threshold}]
    else:
        steps = [{"color": "green", "value": None}, {"color": "red", "value": threshold}]
    return {"mode": "absolute", "steps": steps}


def timeseries(
    title: str,
    queries: list[tuple[str, str]],
    unit: str = "short",
    threshold: float | None = None,
    below_is_bad: bool = False,
    description: str = "",
    stack: bool = False,
) -> dict[str, Any]:
    """A time series panel; an alert threshold is drawn as a dashed line."""
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": True,
        "thresholdsStyle": {"mode": "dashed" if threshold is not None else "off"},
    }
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    defaults = {"unit": unit, "custom": custom, "thresholds": _thresholds(threshold, below_is_bad)}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _targets(queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
    }


def stat(
    title: str,
    expr: str,
    unit: str = "short",
    threshold: float | None = None,
    below_is_bad: bool = False,
    description: str = "",
) -> dict[str, Any]:
    """A single-value panel, coloured by the threshold."""
    defaults = {"unit": unit, "thresholds": _thresholds(threshold, below_is_bad)}
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _targets([(expr, "")]),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"colorMode": "value", "graphMode": "area", "reduceOptions": {"calcs": ["lastNotNull"]}},
    }


class Layout:
    """Places panels left to right in rows of 24 grid units and numbers them."""

    def __init__(self) -> None:
        self.x = self.y = self.row_height = 0
        self.next_id = 1
        self.panels: list[dict[str, Any]] = []

    def add(self, panel: dict[str, Any], w: int, h: int = 8) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        panel["id"] = self.next_id
        self.next_id += 1
        self.x += w
        self.row_height = max(self.row_height, h)
        self.panels.append(panel)

    def row(self, title: str) -> None:
        self.x = 24  # a row always starts a new line
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)


def dashboard(uid: str, title: str, description: str, layout: Layout) -> dict[str, Any]:
    instance_query = 'label_values(up{job="asr"}, instance)'
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["asr"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "links": [{"type": "dashboards", "tags": ["asr"], "title": "ASR dashboards", "includeVars": True}],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "prometheus"},
                },
                {
                    "name": "instance",
                    "label": "Instance",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {"query": instance_query, "refId": "instance"},
                    "definition": instance_query,
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "annotations": {"list": []},
        "panels": layout.panels,
    }
