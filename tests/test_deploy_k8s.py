"""The Kubernetes manifests as kustomize renders them: schema-valid, and in agreement with the server.

Ports, probes, variables and arguments are checked against the real parsers of vae-serve and
vae-export and the server's defaults, never against a copied list, so a renamed flag or a moved port
fails here. Rendering needs kubectl (or kustomize); scripts/validate_k8s.py says how to get it.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import tomllib
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml

from server.process.settings import Settings, build_parser, parse_settings, settings_from_args
from tests.system_tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ("overlays/cpu", "overlays/gpu")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _load_validator():
    spec = importlib.util.spec_from_file_location(
        "validate_k8s", ROOT / "scripts" / "validate_k8s.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validator = _load_validator()


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    require_tool("kubectl", "kustomize")
    return {name: validator.render(name) for name in validator.KUSTOMIZATIONS}


@pytest.fixture
def promtool() -> str:
    """Schema validation of a PrometheusRule runs `promtool check rules`."""
    return require_tool("promtool")


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment", "vae-serve")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "vae-serve")


def pod_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    return one(objects, "Deployment", "vae-serve")["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def server_env_names() -> set[str]:
    return {
        "VAE_" + action.dest.upper()
        for action in build_parser()._actions
        if action.option_strings and action.dest != "help"
    }


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ("500m", "2") in cores."""
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def pod_environment(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The VAE_* variables the server container gets: the ConfigMap's, then the container's own
    `env` (plain values, and resource fields as the downward API resolves them: rounded up)."""
    environment = dict(one(objects, "ConfigMap")["data"])
    container = server_container(objects)
    for entry in container.get("env", []):
        if "value" in entry:
            environment[entry["name"]] = entry["value"]
        elif "resourceFieldRef" in entry["valueFrom"]:
            field = entry["valueFrom"]["resourceFieldRef"]
            kind, resource = field["resource"].split(".")
            value = cpu_cores(container["resources"][kind][resource]) / cpu_cores(field["divisor"])
            environment[entry["name"]] = str(math.ceil(value))
    return environment


def configured_settings(objects: list[dict[str, Any]], monkeypatch) -> Settings:
    """The Settings vae-serve builds inside the pod: the pod's variables, no flags."""
    for name in server_env_names():
        monkeypatch.delenv(name, raising=False)
    for key, value in pod_environment(objects).items():
        monkeypatch.setenv(key, value)
    return settings_from_args(build_parser().parse_args([]))


def container_port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


# ------------------------------------------------------------------------------ schema validation


@pytest.mark.parametrize("kustomization", validator.KUSTOMIZATIONS)
def test_rendered_objects_are_valid_against_their_schemas(rendered, promtool, kustomization):
    errors = [e for obj in rendered[kustomization] for e in validator.validate_object(obj)]
    assert errors == []


def test_validator_rejects_an_unknown_field(rendered):
    deployment = copy.deepcopy(one(rendered["overlays/gpu"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = (
        True
    )
    assert validator.validate_object(deployment)


def test_validator_rejects_a_named_port_in_a_grpc_probe(rendered):
    deployment = copy.deepcopy(one(rendered["overlays/gpu"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = (
        "grpc"
    )
    assert validator.validate_object(deployment)


def test_validator_rejects_a_kind_it_has_no_schema_for():
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert validator.validate_object(widget)


def test_validator_rejects_a_field_the_servicemonitor_crd_lacks(rendered):
    monitor = copy.deepcopy(one(rendered["overlays/gpu"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["portName"] = "metrics"
    assert validator.validate_object(monitor)


def test_validator_rejects_a_malformed_scrape_interval(rendered):
    monitor = copy.deepcopy(one(rendered["overlays/gpu"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert validator.validate_object(monitor)


def test_rendering_without_kubectl_or_kustomize_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(validator.RenderError, match="install kubectl"):
        validator.render("overlays/gpu")


# ------------------------------------------------------------- configuration agrees with vae-serve


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_configmap_key_is_a_server_variable(rendered, overlay):
    keys = set(one(rendered[overlay], "ConfigMap")["data"])
    assert keys and keys <= server_env_names()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_the_deployment_sets_is_a_server_variable(rendered, overlay):
    names = {e["name"] for e in server_container(rendered[overlay]).get("env", [])}
    assert names and names <= server_env_names()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_refers_to_the_generated_configmap(rendered, overlay):
    refs = [s["configMapRef"]["name"] for s in server_container(rendered[overlay])["envFrom"]]
    assert refs == [one(rendered[overlay], "ConfigMap")["metadata"]["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_keeps_the_images_vae_serve_entrypoint(rendered, overlay):
    container = server_container(rendered[overlay])
    assert ("command" not in container, container.get("args", [])) == (True, [])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_providers_are_onnxruntime_provider_names(rendered, overlay, monkeypatch):
    import onnxruntime

    providers = configured_settings(rendered[overlay], monkeypatch).providers
    assert set(providers) <= set(onnxruntime.get_all_providers())


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("probe", PROBES)
def test_grpc_probe_asks_the_plaintext_health_port(rendered, overlay, probe, monkeypatch):
    # kubelet's gRPC probes speak no TLS: they must not depend on whether VAE_TLS_CERT is set.
    port = server_container(rendered[overlay])[probe]["grpc"]["port"]
    settings = configured_settings(rendered[overlay], monkeypatch)
    assert (port, settings.resolved_health_port() != 0) == (settings.resolved_health_port(), True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_health_port_stays_on_when_tls_is_turned_on(rendered, overlay, monkeypatch):
    plain = configured_settings(rendered[overlay], monkeypatch).resolved_health_port()
    monkeypatch.setenv("VAE_TLS_CERT", "/tls/tls.crt")
    monkeypatch.setenv("VAE_TLS_KEY", "/tls/tls.key")
    assert parse_settings([]).resolved_health_port() == plain


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("probe", PROBES)
def test_grpc_probe_asks_a_service_the_server_reports(rendered, overlay, probe):
    from server.process.app import SERVICE_NAME

    assert server_container(rendered[overlay])[probe]["grpc"]["service"] in ("", SERVICE_NAME)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_readiness_asks_for_the_vae_service_which_turns_not_serving_on_drain(rendered, overlay):
    from server.process.app import SERVICE_NAME

    assert server_container(rendered[overlay])["readinessProbe"]["grpc"]["service"] == SERVICE_NAME


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", ["grpc", "http", "metrics", "health"])
def test_container_port_is_the_configured_one(rendered, overlay, name, monkeypatch):
    settings = configured_settings(rendered[overlay], monkeypatch)
    expected = {
        "grpc": settings.port,
        "http": settings.http_port,
        "metrics": settings.metrics_port,
        "health": settings.resolved_health_port(),
    }[name]
    assert container_port(server_container(rendered[overlay]), name) == expected


def serve_env() -> dict[str, str]:
    lines = (ROOT / "k8s" / "base" / "serve.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


# Values of serve.env that differ from the code's defaults on purpose, and why.
SERVE_ENV_EXCEPTIONS = {
    "VAE_REPOSITORY": "where the image and the Deployment mount the repository",
    "VAE_MAX_CONNECTION_AGE_SECONDS": "off by default; behind a Service, clients must reconnect",
}


@pytest.mark.parametrize("variable", sorted(serve_env()))
def test_serve_env_holds_the_codes_defaults(variable, monkeypatch):
    for name in server_env_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, serve_env()[variable])
    if variable in SERVE_ENV_EXCEPTIONS:
        assert parse_settings([]) != Settings()
    else:
        assert parse_settings([]) == Settings(), f"{variable}={serve_env()[variable]}"


def test_serve_env_sets_only_server_variables():
    assert set(serve_env()) <= server_env_names()


@pytest.mark.parametrize(("overlay", "processes"), [("overlays/cpu", 2), ("overlays/gpu", 1)])
def test_one_server_process_per_requested_core(rendered, overlay, processes, monkeypatch):
    container = server_container(rendered[overlay])
    source = {e["name"]: e for e in container["env"]}["VAE_PROCESSES"]["valueFrom"]
    settings = configured_settings(rendered[overlay], monkeypatch)
    assert (source["resourceFieldRef"]["resource"], settings.process_count()) == (
        "requests.cpu",
        processes,
    )


def test_base_runs_one_process_for_its_fraction_of_a_core(rendered, monkeypatch):
    # 500m rounds up to one whole core in the downward API.
    assert configured_settings(rendered["base"], monkeypatch).process_count() == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configured_ports_are_the_servers_defaults(rendered, overlay, monkeypatch):
    settings = configured_settings(rendered[overlay], monkeypatch)
    ports = (settings.port, settings.http_port, settings.metrics_port)
    assert ports == (Settings().port, Settings().http_port, Settings().metrics_port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_outlasts_the_pre_stop_pause_and_the_servers_drain(
    rendered, overlay, monkeypatch
):
    pod = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    pre_stop = server_container(rendered[overlay])["lifecycle"]["preStop"]["exec"]["command"]
    pause = float(pre_stop[1]) if pre_stop[0] == "sleep" else 0.0
    drain = configured_settings(rendered[overlay], monkeypatch).grace_seconds
    assert pod["terminationGracePeriodSeconds"] > pause + drain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_repository_is_mounted_read_only_where_the_server_looks(
    rendered, overlay, monkeypatch
):
    repository = str(configured_settings(rendered[overlay], monkeypatch).repository)
    mounts = server_container(rendered[overlay])["volumeMounts"]
    assert [m.get("readOnly") for m in mounts if m["mountPath"] == repository] == [True]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_repository_is_where_the_image_expects_it(rendered, overlay):
    image_env = {
        c.value[i]: c.value[i + 1]
        for c in dockerfile.parse_file(str(ROOT / "Dockerfile"))
        if c.cmd == "ENV"
        for i in range(0, len(c.value), 2)
    }
    assert (
        one(rendered[overlay], "ConfigMap")["data"]["VAE_REPOSITORY"] == image_env["VAE_REPOSITORY"]
    )


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != "overlays/cpu"])
def test_onnxruntime_threads_follow_the_containers_own_cpu_limit(rendered, overlay):
    container = server_container(rendered[overlay])
    env = {e["name"]: e for e in container["env"]}
    source = env["VAE_INTRA_OP_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert (source["containerName"], source["resource"]) == (container["name"], "limits.cpu")


def test_cpu_pods_run_one_onnxruntime_thread_per_process_on_as_many_whole_cores(rendered):
    container = server_container(rendered["overlays/cpu"])
    env = {e["name"]: e for e in container["env"]}
    resources = container["resources"]
    assert env["VAE_INTRA_OP_THREADS"]["value"] == "1"
    assert env["VAE_PROCESSES"]["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "2"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_repository_claim_is_read_only_at_the_volume_too(rendered, overlay):
    volumes = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]["volumes"]
    claim = next(v for v in volumes if v["name"] == "model-repository")["persistentVolumeClaim"]
    assert claim == {"claimName": "vae-model-repository", "readOnly": True}


# ----------------------------------------------------------------------------------- security


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("runAsNonRoot", True),
        ("readOnlyRootFilesystem", True),
        ("allowPrivilegeEscalation", False),
        ("privileged", False),
        ("capabilities", {"drop": ["ALL"]}),
    ],
)
def test_server_container_security_context(rendered, overlay, setting, value):
    assert server_container(rendered[overlay])["securityContext"][setting] == value


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_uses_the_runtime_default_seccomp_profile(rendered, overlay):
    pod = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_as_the_user_the_image_declares(rendered, overlay):
    users = {
        c.value[0].split(":")[0]
        for c in dockerfile.parse_file(str(ROOT / "Dockerfile"))
        if c.cmd == "USER"
    }
    pod = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    assert users == {str(pod["securityContext"]["runAsUser"])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tmp_is_a_writable_empty_dir_beside_the_read_only_root(rendered, overlay):
    pod = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    mount = next(
        m for m in server_container(rendered[overlay])["volumeMounts"] if m["mountPath"] == "/tmp"
    )
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert ("emptyDir" in volume, mount.get("readOnly", False)) == (True, False)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_does_not_mount_a_service_account_token(rendered, overlay):
    pod = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False


def test_namespace_enforces_the_restricted_pod_security_standard(rendered):
    labels = one(rendered["overlays/gpu"], "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("kind", ["requests", "limits"])
@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_server_container_sets_resources(rendered, overlay, kind, resource):
    assert resource in server_container(rendered[overlay])["resources"][kind]


# ----------------------------------------------------------------------- services and friends


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", ["vae-serve", "vae-serve-headless"])
def test_service_selects_the_server_pods(rendered, overlay, service):
    selector = one(rendered[overlay], "Service", service)["spec"]["selector"]
    assert selects(selector, pod_labels(rendered[overlay]))


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", ["vae-serve", "vae-serve-headless"])
def test_service_ports_target_named_container_ports_of_the_same_number(rendered, overlay, service):
    container = server_container(rendered[overlay])
    ports = one(rendered[overlay], "Service", service)["spec"]["ports"]
    assert all(p["port"] == container_port(container, p["targetPort"]) for p in ports)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cluster_ip_service_carries_grpc_http_and_metrics(rendered, overlay):
    ports = one(rendered[overlay], "Service", "vae-serve")["spec"]["ports"]
    assert {p["name"] for p in ports} == {"grpc", "http", "metrics"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_headless_service_resolves_to_pod_addresses_for_grpc(rendered, overlay):
    spec = one(rendered[overlay], "Service", "vae-serve-headless")["spec"]
    assert (spec["clusterIP"], [p["name"] for p in spec["ports"]]) == ("None", ["grpc"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_exactly_one_service_which_has_its_port(rendered, overlay):
    monitor = one(rendered[overlay], "ServiceMonitor")["spec"]
    port_names = {e["port"] for e in monitor["endpoints"]}
    scraped = [
        s
        for s in rendered[overlay]
        if s["kind"] == "Service"
        and selects(monitor["selector"]["matchLabels"], s["metadata"]["labels"])
        and port_names & {p["name"] for p in s["spec"]["ports"]}
    ]
    assert [s["metadata"]["name"] for s in scraped] == ["vae-serve"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_the_path_prometheus_client_serves(rendered, overlay):
    assert {e["path"] for e in one(rendered[overlay], "ServiceMonitor")["spec"]["endpoints"]} == {
        "/metrics"
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_only_the_grpc_http_and_metrics_ports(rendered, overlay, monkeypatch):
    policy = one(rendered[overlay], "NetworkPolicy")["spec"]
    settings = configured_settings(rendered[overlay], monkeypatch)
    ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ports == {settings.port, settings.http_port, settings.metrics_port}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_applies_to_the_server_pods(rendered, overlay):
    selector = one(rendered[overlay], "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
    assert selects(selector, pod_labels(rendered[overlay]))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budget_covers_the_server_pods(rendered, overlay):
    selector = one(rendered[overlay], "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert selects(selector, pod_labels(rendered[overlay]))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_scales_the_server_deployment(rendered, overlay):
    target = one(rendered[overlay], "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "vae-serve")


def adapter_metric_names() -> set[str]:
    path = ROOT / "k8s" / "autoscaling" / "prometheus-adapter-rules.yaml"
    return {rule["name"]["as"] for rule in yaml.safe_load(path.read_text())["rules"]}


# Calls in flight per server process that the autoscaler aims at (k8s/base/hpa.yaml says why).
IN_FLIGHT_PER_PROCESS = 2


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_autoscaler_scales_on_calls_in_flight_per_pod_served_by_the_adapter(rendered, overlay):
    metrics = one(rendered[overlay], "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [(m["type"], m["pods"]["metric"]["name"]) for m in metrics] == [
        ("Pods", "vae_in_flight_requests")
    ]
    assert {m["pods"]["metric"]["name"] for m in metrics} <= adapter_metric_names()


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_autoscaler_target_is_two_calls_in_flight_per_server_process(
    rendered, overlay, monkeypatch
):
    (metric,) = one(rendered[overlay], "HorizontalPodAutoscaler")["spec"]["metrics"]
    processes = configured_settings(rendered[overlay], monkeypatch).process_count()
    assert metric["pods"]["target"] == {
        "type": "AverageValue",
        "averageValue": str(IN_FLIGHT_PER_PROCESS * processes),
    }


def test_autoscaling_rule_maps_series_to_namespaces_and_pods(rendered):
    config = yaml.safe_load(one(rendered["autoscaling"], "ConfigMap")["data"]["config.yaml"])
    overrides = [r["resources"]["overrides"] for r in config["rules"]]
    assert overrides == [{"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}]


def test_autoscaling_rule_is_the_one_in_the_helm_values():
    folder = ROOT / "k8s" / "autoscaling"
    rules = yaml.safe_load((folder / "prometheus-adapter-rules.yaml").read_text())["rules"]
    values = yaml.safe_load((folder / "prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["custom"] == rules


def test_autoscaling_configmap_keeps_the_name_the_adapter_mounts(rendered):
    config_map = one(rendered["autoscaling"], "ConfigMap")
    assert (config_map["metadata"]["name"], list(config_map["data"])) == (
        "prometheus-adapter",
        ["config.yaml"],
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_floor_keeps_a_pod_up_through_a_voluntary_disruption(rendered, overlay):
    floor = one(rendered[overlay], "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    budget = one(rendered[overlay], "PodDisruptionBudget")["spec"]["maxUnavailable"]
    assert floor - budget >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_leaves_the_replica_count_to_the_autoscaler(rendered, overlay):
    assert "replicas" not in one(rendered[overlay], "Deployment")["spec"]


# ---------------------------------------------------------------------------------- the overlays


def test_gpu_overlay_asks_for_one_gpu(rendered):
    assert (
        server_container(rendered["overlays/gpu"])["resources"]["limits"]["nvidia.com/gpu"] == "1"
    )


def test_gpu_overlay_tolerates_the_gpu_taint(rendered):
    pod = one(rendered["overlays/gpu"], "Deployment")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" in {t["key"] for t in pod["tolerations"]}


def test_gpu_overlay_schedules_on_gpu_nodes_only(rendered):
    pod = one(rendered["overlays/gpu"], "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_gpu_overlay_refuses_to_serve_on_cpu(rendered, monkeypatch):
    assert configured_settings(rendered["overlays/gpu"], monkeypatch).require_gpu is True


def test_gpu_overlay_prefers_the_cuda_provider(rendered, monkeypatch):
    providers = configured_settings(rendered["overlays/gpu"], monkeypatch).providers
    assert providers[0] == "CUDAExecutionProvider"


def test_cpu_overlay_asks_for_no_gpu(rendered):
    resources = server_container(rendered["overlays/cpu"])["resources"]
    assert not any("nvidia.com/gpu" in resources[k] for k in ("requests", "limits"))


def test_cpu_overlay_runs_the_cpu_provider_only(rendered, monkeypatch):
    providers = configured_settings(rendered["overlays/cpu"], monkeypatch).providers
    assert providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize(("overlay", "suffix"), [("overlays/cpu", "-cpu"), ("overlays/gpu", "")])
def test_overlay_runs_its_image_flavour(rendered, overlay, suffix):
    tag = server_container(rendered[overlay])["image"].rsplit(":", 1)[1]
    assert tag.endswith("-cpu") == bool(suffix)


# --------------------------------------------------------------------------- the batch-export Job


def export_container(rendered) -> dict[str, Any]:
    return one(rendered["jobs"], "Job", "vae-export")["spec"]["template"]["spec"]["containers"][0]


def test_job_runs_the_vae_export_console_script(rendered):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    command = export_container(rendered)["command"]
    assert (command, scripts["vae-export"]) == (["vae-export"], "export.cli:main")


def test_job_arguments_parse_with_vae_export(rendered):
    from export.cli import build_parser as export_parser

    args = export_parser().parse_args(export_container(rendered)["args"])
    mounts = {m["mountPath"] for m in export_container(rendered)["volumeMounts"]}
    assert {str(args.source), str(args.repository)} <= mounts


def test_job_reads_checkpoints_read_only(rendered):
    from export.cli import build_parser as export_parser

    source = str(export_parser().parse_args(export_container(rendered)["args"]).source)
    mount = next(m for m in export_container(rendered)["volumeMounts"] if m["mountPath"] == source)
    assert mount["readOnly"] is True


def test_job_writes_the_claim_the_servers_read(rendered):
    from export.cli import build_parser as export_parser

    repository = str(export_parser().parse_args(export_container(rendered)["args"]).repository)
    pod = one(rendered["jobs"], "Job")["spec"]["template"]["spec"]
    mount = next(
        m for m in export_container(rendered)["volumeMounts"] if m["mountPath"] == repository
    )
    claim = next(v for v in pod["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]
    server_claim = one(rendered["overlays/gpu"], "PersistentVolumeClaim", "vae-model-repository")
    assert (claim["claimName"], mount.get("readOnly", False)) == (
        server_claim["metadata"]["name"],
        False,
    )


def test_job_runs_in_the_servers_namespace(rendered):
    namespaced = [o for o in rendered["jobs"] if o["kind"] != "Namespace"]
    namespaces = {o["metadata"]["namespace"] for o in namespaced}
    assert namespaces == {one(rendered["overlays/gpu"], "Namespace")["metadata"]["name"]}


def test_job_runs_the_train_image(rendered):
    assert export_container(rendered)["image"].rsplit(":", 1)[0].endswith("/vae-train")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("runAsNonRoot", True),
        ("readOnlyRootFilesystem", True),
        ("allowPrivilegeEscalation", False),
        ("capabilities", {"drop": ["ALL"]}),
    ],
)
def test_job_container_security_context(rendered, setting, value):
    assert export_container(rendered)["securityContext"][setting] == value


def test_job_never_restarts_in_place(rendered):
    assert one(rendered["jobs"], "Job")["spec"]["template"]["spec"]["restartPolicy"] == "Never"


# ------------------------------------------------------------------------------------- KServe
# k8s/kserve: a ServingRuntime running vae-serve and an InferenceService using it.


def runtime_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objects, "ServingRuntime")["spec"]["containers"]
    return container


def runtime_settings(objects: list[dict[str, Any]], monkeypatch) -> Settings:
    """The Settings vae-serve builds in the KServe predictor: the container's variables, no flags."""
    for name in server_env_names():
        monkeypatch.delenv(name, raising=False)
    for variable in runtime_container(objects)["env"]:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    return settings_from_args(build_parser().parse_args([]))


def test_validator_rejects_a_field_the_servingruntime_crd_lacks(rendered):
    runtime = copy.deepcopy(one(rendered["kserve"], "ServingRuntime"))
    runtime["spec"]["modelFormats"] = runtime["spec"].pop("supportedModelFormats")
    assert validator.validate_object(runtime)


def test_validator_checks_the_runtimes_containers_as_kubernetes_containers(rendered):
    runtime = copy.deepcopy(one(rendered["kserve"], "ServingRuntime"))
    runtime["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "h2c"
    assert validator.validate_object(runtime)


def test_validator_rejects_a_protocol_kserve_does_not_know(rendered):
    service = copy.deepcopy(one(rendered["kserve"], "InferenceService"))
    service["spec"]["predictor"]["model"]["protocolVersion"] = "grpc-v3"
    assert validator.validate_object(service)


def test_validator_rejects_a_misspelt_model_field(rendered):
    service = copy.deepcopy(one(rendered["kserve"], "InferenceService"))
    service["spec"]["predictor"]["model"]["storageURI"] = "pvc://x"
    assert validator.validate_object(service)


def test_kserve_runtime_sets_only_server_variables(rendered):
    names = {e["name"] for e in runtime_container(rendered["kserve"])["env"]}
    assert names and names <= server_env_names()


def test_kserve_runtime_keeps_the_images_vae_serve_entrypoint(rendered):
    container = runtime_container(rendered["kserve"])
    assert ("command" not in container, container.get("args", [])) == (True, [])


def test_kserve_repository_is_where_kserve_mounts_the_storage_uri(rendered, monkeypatch):
    # KServe mounts (pvc://) or downloads the storageUri at /mnt/models (its DefaultModelLocalMountPath).
    assert str(runtime_settings(rendered["kserve"], monkeypatch).repository) == "/mnt/models"


def test_kserve_grpc_port_is_named_h2c_and_is_the_configured_one(rendered, monkeypatch):
    (port,) = runtime_container(rendered["kserve"])["ports"]
    settings = runtime_settings(rendered["kserve"], monkeypatch)
    assert (port["name"], port["containerPort"]) == ("h2c", settings.port)


@pytest.mark.parametrize("probe", PROBES)
def test_kserve_probes_ask_grpc_health_on_the_configured_port(rendered, probe, monkeypatch):
    from server.process.app import SERVICE_NAME

    grpc_probe = runtime_container(rendered["kserve"])[probe]["grpc"]
    settings = runtime_settings(rendered["kserve"], monkeypatch)
    assert grpc_probe["port"] == settings.port
    assert grpc_probe["service"] == ("" if probe == "livenessProbe" else SERVICE_NAME)


def test_kserve_metrics_annotation_is_the_configured_metrics_port(rendered, monkeypatch):
    annotations = one(rendered["kserve"], "ServingRuntime")["spec"]["annotations"]
    settings = runtime_settings(rendered["kserve"], monkeypatch)
    assert annotations["prometheus.kserve.io/port"] == str(settings.metrics_port)


def test_inference_service_uses_the_runtime_with_a_format_and_protocol_it_supports(rendered):
    runtime = one(rendered["kserve"], "ServingRuntime")
    model = one(rendered["kserve"], "InferenceService")["spec"]["predictor"]["model"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert model["runtime"] == runtime["metadata"]["name"]
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert (
        model["protocolVersion"] == "grpc-v2" and "grpc-v2" in runtime["spec"]["protocolVersions"]
    )


def test_inference_service_serves_the_claim_the_export_job_fills(rendered):
    claim = one(rendered["base"], "PersistentVolumeClaim", "vae-model-repository")
    model = one(rendered["kserve"], "InferenceService")["spec"]["predictor"]["model"]
    assert model["storageUri"] == f"pvc://{claim['metadata']['name']}"


def test_inference_service_grace_outlasts_the_servers_drain(rendered, monkeypatch):
    predictor = one(rendered["kserve"], "InferenceService")["spec"]["predictor"]
    settings = runtime_settings(rendered["kserve"], monkeypatch)
    assert predictor["terminationGracePeriodSeconds"] > settings.grace_seconds


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("runAsNonRoot", True),
        ("readOnlyRootFilesystem", True),
        ("allowPrivilegeEscalation", False),
        ("capabilities", {"drop": ["ALL"]}),
        ("seccompProfile", {"type": "RuntimeDefault"}),
    ],
)
def test_kserve_container_meets_the_restricted_pod_security_standard(rendered, setting, value):
    assert runtime_container(rendered["kserve"])["securityContext"][setting] == value


# k8s/kserve-rest: the same runtime with KServe routing to the HTTP port (the REST protocol).


def test_kserve_rest_port_is_named_http1_and_is_the_configured_http_port(rendered, monkeypatch):
    (port,) = runtime_container(rendered["kserve-rest"])["ports"]
    settings = runtime_settings(rendered["kserve-rest"], monkeypatch)
    assert (port["name"], port["containerPort"]) == ("http1", settings.http_port)


@pytest.mark.parametrize("probe", PROBES)
def test_kserve_rest_probes_ask_the_v2_health_routes_on_the_http_port(rendered, probe, monkeypatch):
    """Ready turns 503 when the server drains (tests/test_http_ops.py), live stays 200."""
    http_get = runtime_container(rendered["kserve-rest"])[probe]["httpGet"]
    settings = runtime_settings(rendered["kserve-rest"], monkeypatch)
    assert http_get["port"] == settings.http_port
    expected = "/v2/health/live" if probe == "livenessProbe" else "/v2/health/ready"
    assert http_get["path"] == expected


def test_kserve_rest_runtime_and_service_speak_v2(rendered):
    runtime = one(rendered["kserve-rest"], "ServingRuntime")
    model = one(rendered["kserve-rest"], "InferenceService")["spec"]["predictor"]["model"]
    assert runtime["spec"]["protocolVersions"] == ["v2"] and model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]


def test_kserve_rest_runtime_sets_only_server_variables(rendered):
    names = {e["name"] for e in runtime_container(rendered["kserve-rest"])["env"]}
    assert names <= set(server_env_names())
