"""The dashboard, the alerts and the autoscaling rule against what a real server exports.

Every metric name (and label) a Grafana query, an alert or the prometheus-adapter rule uses must be
in a live `/metrics` scrape of vae-serve that has served calls, failed to load a version and
reloaded its repository, so every labelled series exists. The PromQL itself is checked by promtool
(`promtool check rules`; Debian package `prometheus`), with the dashboard's Grafana variables filled
in, and the alerts by `promtool test rules` (tests/promtool/).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from server.codecs import tensor_to_proto
from server.proto_gen.vae.v1 import vae_pb2
from tests.server_helpers import (
    copy_repository,
    reload_and_wait,
    running_server,
    sample_request,
    scrape,
    settings,
    stub_for,
)
from tests.system_tools import require_tool
from tests.test_deploy_k8s import one, validator

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "k8s" / "monitoring"
AUTOSCALING = ROOT / "k8s" / "autoscaling"
DASHBOARD = MONITORING / "vae-serve-dashboard.json"
RULES = MONITORING / "prometheusrule.yaml"
ALERT_TESTS = ROOT / "tests" / "promtool" / "vae_serve_alerts_test.yaml"
# Labels Prometheus adds when it scrapes a pod through the ServiceMonitor, and `up`, the series it
# makes itself: never in /metrics.
SCRAPE_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}
SCRAPE_SERIES = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
PROMQL_WORDS |= {"and", "or", "unless"}
# Grafana's variables, as a dashboard user would pick them.
GRAFANA_VARIABLES = {"$namespace": "vae", "$model": ".*", "$__rate_interval": "1m"}


# ----------------------------------------------------------------------------- reading PromQL


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    return re.sub(r"\[[^\]]*\]", "", expr)  # range selectors


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (not functions, keywords or grouping labels)."""
    bare = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", _strip(expr)
    )
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", bare):
        if match.group(2) is None and match.group(1) not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def selector_labels(expr: str) -> set[tuple[str, str]]:
    """(metric, label) for every label a selector matches on, e.g. `x{code="OK"}` -> (x, code)."""
    pairs = set()
    for name, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", re.sub(r'"[^"]*"', '""', matchers)):
            pairs.add((name, label))
    return pairs


def grouping_labels(expr: str) -> set[str]:
    """Labels named in `by (...)` and `on (...)` clauses."""
    found = re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", _strip(expr))
    return {label.strip() for group in found for label in group.split(",") if label.strip()}


def test_the_promql_reader_finds_metrics_and_labels():
    expr = (
        'histogram_quantile(0.99, sum by (le, rpc) (rate(vae_x_bucket{code="OK", a=~"b|c"}[5m])))'
        " / on (pod) vae_y unless vae_z"
    )
    assert (metric_names(expr), selector_labels(expr), grouping_labels(expr)) == (
        {"vae_x_bucket", "vae_y", "vae_z"},
        {("vae_x_bucket", "code"), ("vae_x_bucket", "a")},
        {"le", "rpc", "pod"},
    )


# --------------------------------------------------------------------------- the shipped files


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard query and variable."""
    board = dashboard()
    queries = [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), \w+\)", variable["query"]["query"])
            assert inner, variable["query"]["query"]
            queries.append((f"${variable['name']}", inner.group(1)))
    return queries


def alert_rules() -> list[dict[str, Any]]:
    spec = yaml.safe_load(RULES.read_text())["spec"]
    return [rule for group in spec["groups"] for rule in group["rules"]]


def adapter_rules() -> list[dict[str, Any]]:
    return yaml.safe_load((AUTOSCALING / "prometheus-adapter-rules.yaml").read_text())["rules"]


def adapter_query(rule: dict[str, Any]) -> str:
    """The adapter's metricsQuery as it sends it for one pod of the vae namespace."""
    series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"].strip("'"))
    assert series
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series.group(0))
        .replace("<<.LabelMatchers>>", 'namespace="vae", pod=~"vae-serve-.*"')
        .replace("<<.GroupBy>>", "pod")
    )


def filled(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# ---------------------------------------------------------------- a live server's /metrics


@pytest.fixture(scope="module")
def live_series(repository: Path, tmp_path_factory) -> Iterator[dict[str, set[str]]]:
    """{series name: label names} of a real server's /metrics after it has done everything once:
    served each RPC, refused a call, failed to load a version, and reloaded its repository."""
    repo = copy_repository(repository, tmp_path_factory.mktemp("monitored"))
    shutil.copytree(repository / "tiny-ae", repo / "broken")
    (repo / "broken" / "1" / "decoder.onnx").write_bytes(b"not an onnx graph")
    meta = (repo / "broken" / "1" / "model.json").read_text().replace('"tiny-ae"', '"broken"')
    (repo / "broken" / "1" / "model.json").write_text(meta)
    with running_server(settings(repo)) as server, stub_for(server) as stub:
        ref = vae_pb2.ModelRef(name="tiny-vae")
        stub.Sample(sample_request(count=4), timeout=30)
        images = tensor_to_proto(np.zeros((2, 1, 28, 28), dtype=np.float32))
        stub.Encode(vae_pb2.EncodeRequest(model=ref, images=images), timeout=30)
        latents = tensor_to_proto(np.zeros((2, 8), dtype=np.float32))
        stub.Decode(vae_pb2.DecodeRequest(model=ref, latents=latents), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.Sample(sample_request(model="no-such-model"), timeout=30)
        reload_and_wait(server)
        series: dict[str, set[str]] = {}
        for name, labels in scrape(server):
            series.setdefault(name, set()).update(label for label, _ in labels)
        yield series


def test_the_live_scrape_holds_every_labelled_series_the_checks_rely_on(live_series):
    expected = {
        "vae_requests_total",
        "vae_request_latency_seconds_bucket",
        "vae_batch_size_bucket",
        "vae_queue_wait_seconds_bucket",
        "vae_model_load_failures_total",
        "vae_repository_reloads_total",
    }
    assert expected <= set(live_series)


@pytest.mark.parametrize(("where", "expr"), dashboard_queries(), ids=lambda v: str(v)[:60])
def test_every_dashboard_query_selects_metrics_the_server_exports(live_series, where, expr):
    names = metric_names(expr)
    assert names and names - set(live_series) == set(), f"{where}: {expr}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_selects_metrics_the_server_exports(live_series, rule):
    names = metric_names(rule["expr"]) - SCRAPE_SERIES
    assert names - set(live_series) == set(), rule["expr"]


@pytest.mark.parametrize("rule", adapter_rules(), ids=lambda r: r["name"]["as"])
def test_the_autoscaling_rule_selects_a_metric_the_server_exports(live_series, rule):
    assert metric_names(rule["seriesQuery"].strip("'")) <= set(live_series)


def label_problems(expr: str, live_series: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(metric, label) pairs of `expr` that the live server does not export."""
    missing = [
        (name, label)
        for name, label in selector_labels(expr)
        if name in live_series and label not in live_series[name] | SCRAPE_LABELS
    ]
    known = set().union(*(live_series.get(n, set()) for n in metric_names(expr)))
    missing += [("by/on", label) for label in grouping_labels(expr) - known - SCRAPE_LABELS]
    return missing


@pytest.mark.parametrize(
    "expr",
    [e for _, e in dashboard_queries()] + [r["expr"] for r in alert_rules()],
    ids=lambda v: v[:60],
)
def test_every_label_a_query_uses_is_on_the_metric(live_series, expr):
    assert label_problems(expr, live_series) == []


# ---------------------------------------------------------------------------- PromQL is valid


@pytest.fixture
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture
def kustomize() -> str:
    return require_tool("kubectl", "kustomize")


def test_dashboard_queries_are_valid_promql(promtool):
    groups = [
        {
            "name": "dashboard",
            "rules": [
                {"record": f"dashboard:query_{i}", "expr": filled(expr)}
                for i, (_, expr) in enumerate(dashboard_queries())
            ],
        }
    ]
    assert validator.check_rules(groups) == []


def test_the_autoscaling_rule_renders_valid_promql(promtool):
    rules = [
        {"record": f"adapter:query_{i}", "expr": adapter_query(r)}
        for i, r in enumerate(adapter_rules())
    ]
    assert validator.check_rules([{"name": "adapter", "rules": rules}]) == []


def test_promtool_check_rules_passes_on_the_alerts(promtool):
    assert validator.check_rules(yaml.safe_load(RULES.read_text())["spec"]["groups"]) == []


def test_promtool_check_rules_catches_broken_promql(promtool):
    broken = [{"name": "g", "rules": [{"alert": "A", "expr": "sum(rate(vae_x[5m])"}]}]
    assert validator.check_rules(broken)


def test_promtool_unit_tests_of_the_alerts_pass(tmp_path, promtool):
    spec = yaml.safe_load(RULES.read_text())["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": spec["groups"]}))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    result = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / ALERT_TESTS.name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == {rule["alert"] for rule in alert_rules()}


# ------------------------------------------------------------------------- what the board shows


@pytest.mark.parametrize(
    "metric",
    [
        "vae_requests_total",  # request rate by code
        "vae_request_latency_seconds_bucket",  # p50 / p99
        "vae_samples_generated_total",
        "vae_batch_size_sum",
        "vae_queue_wait_seconds_bucket",
        "vae_in_flight_requests",
        "vae_model_loaded",
    ],
)
def test_the_dashboard_shows(metric):
    assert any(metric in metric_names(expr) for _, expr in dashboard_queries())


def test_request_rate_is_split_by_status_code():
    assert any(
        "vae_requests_total" in metric_names(e) and "code" in grouping_labels(e)
        for _, e in dashboard_queries()
    )


def test_latency_percentiles_count_successful_calls_only():
    latency = [e for _, e in dashboard_queries() if "vae_request_latency_seconds_bucket" in e]
    quantiles = {re.search(r"histogram_quantile\(([\d.]+)", e).group(1) for e in latency}  # type: ignore[union-attr]
    assert quantiles == {"0.5", "0.99"} and all('code="OK"' in e for e in latency)


def test_loaded_models_panel_shows_the_execution_provider():
    table = next(p for p in dashboard()["panels"] if "vae_model_loaded" in json.dumps(p))
    assert "provider" in grouping_labels(table["targets"][0]["expr"])


def test_dashboard_panel_ids_are_unique_and_every_query_uses_the_datasource_variable():
    panels = dashboard()["panels"]
    sources = {t["datasource"]["uid"] for p in panels for t in p["targets"]}
    assert (len({p["id"] for p in panels}), sources) == (len(panels), {"${datasource}"})


def test_dashboard_uses_no_process_collector_metrics():
    # The server's multi-process mode does not export the client library's process_* series.
    used = set().union(*(metric_names(e) for _, e in dashboard_queries()))
    assert {n for n in used if not n.startswith("vae_")} == set()


# --------------------------------------------------------------------- the rendered manifests


@pytest.fixture(scope="module")
def monitoring_objects() -> list[dict[str, Any]]:
    require_tool("kubectl", "kustomize")
    return validator.render("monitoring")


def test_dashboard_configmap_carries_the_grafana_sidecar_label(monitoring_objects):
    config_map = one(monitoring_objects, "ConfigMap", "vae-serve-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_dashboard_configmap_holds_the_dashboard_json(monitoring_objects):
    data = one(monitoring_objects, "ConfigMap", "vae-serve-dashboard")["data"]
    assert [json.loads(v)["uid"] for v in data.values()] == [dashboard()["uid"]]


def test_alerts_are_rendered_as_a_prometheus_rule(monitoring_objects):
    rule = one(monitoring_objects, "PrometheusRule", "vae-serve")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())["spec"]


def test_monitoring_lives_in_the_servers_namespace(monitoring_objects):
    server = validator.render("overlays/gpu")
    assert {o["metadata"]["namespace"] for o in monitoring_objects} == {
        one(server, "Namespace")["metadata"]["name"]
    }


def test_alerts_select_the_job_the_service_monitor_scrapes(kustomize):
    # Without jobLabel, the Prometheus Operator names the job after the scraped Service.
    monitor = one(validator.render("overlays/gpu"), "ServiceMonitor")
    assert "jobLabel" not in monitor["spec"]
    jobs = {m for r in alert_rules() for m in re.findall(r'job="([^"]+)"', r["expr"])}
    assert jobs == {"vae-serve"}


def test_validator_rejects_a_prometheus_rule_with_broken_promql(monitoring_objects, promtool):
    rule = json.loads(json.dumps(one(monitoring_objects, "PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["expr"] = "rate(vae_requests_total[5m]"
    assert validator.validate_object(rule)


def test_validator_rejects_a_field_the_prometheus_rule_crd_lacks(monitoring_objects, promtool):
    rule = json.loads(json.dumps(one(monitoring_objects, "PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["severity"] = "page"
    assert validator.validate_object(rule)
