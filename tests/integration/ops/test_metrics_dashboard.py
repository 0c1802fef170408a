"""The Grafana dashboard, the alert rules and the Prometheus config only name metrics that exist."""

from __future__ import annotations

import json
import re

import yaml

from agi.ops.config import repo_root
from agi.ops.metrics import Metrics

ROOT = repo_root()
_NAME = re.compile(r"\bconsent_ivr_[a-z0-9_]+")


def _exported() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        for sample in family.samples:
            names.add(sample.name)
        names.add(family.name)
    # labelled series exist once first moved: derive their sample names from the family
    for family in Metrics().registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum")}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_dashboard_queries_name_only_exported_metrics() -> None:
    dash = json.loads((ROOT / "dashboards" / "grafana" / "consent-ivr.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {n for e in exprs for n in _NAME.findall(e)}
    assert "consent_ivr_marketing_played_without_consent_total" in used
    assert used - _exported() == set()
    assert all(p.get("datasource", {"uid": "prometheus"})["uid"] == "prometheus"
               for p in dash["panels"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_rules_and_provisioning_agree() -> None:
    rules = yaml.safe_load((ROOT / "observability" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {n for e in exprs for n in _NAME.findall(e)}
    assert used and used - _exported() == set()
    prom = yaml.safe_load((ROOT / "observability" / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    ds = yaml.safe_load((ROOT / "observability" / "grafana" / "provisioning" / "datasources"
                         / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["profiles"] == ["observability"]
