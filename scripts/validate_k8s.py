"""Render every kustomization under k8s/ and validate each object against its schema, offline.

Kubernetes kinds are checked against the OpenAPI schemas that kubernetes-validate bundles (strict:
an unknown field is an error), for the oldest and the newest Kubernetes version we support; the
ServiceMonitor and the PrometheusRule against the Prometheus Operator's CRDs, through cloudcoil's
models of them, and the PrometheusRule's rules with `promtool check rules` (Debian package
`prometheus`); KServe's ServingRuntime and InferenceService as `validate_kserve` describes, and
Kubeflow's PyTorchJob as `validate_pytorchjob` does. An object of a kind with no schema here is an
error too, so nothing passes unchecked. Run with `make validate-k8s`.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
# Every kustomization a user may apply; base is rendered too, since the overlays are built on it.
KUSTOMIZATIONS = (
    "base",
    "overlays/cpu",
    "overlays/gpu",
    "jobs",
    "monitoring",
    "autoscaling",
    "kserve",
    "kserve-rest",
    "storage",
    "training/pytorchjob",
    "training/pytorchjob-gpu",
    "training/indexed-job",
    "training/indexed-job-gpu",
)
# Native gRPC probes are GA from 1.27; 1.29 is the oldest release still maintained by most vendors.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())


class RenderError(RuntimeError):
    """kustomize is missing or refused a kustomization."""


class PromtoolMissing(RuntimeError):
    """promtool is not on PATH."""


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise PromtoolMissing(
            "promtool is not on PATH: install the Debian/Ubuntu package `prometheus` "
            "(apt-get install prometheus) or a Prometheus release, then run this again"
        )
    return found


def check_rules(groups: Any) -> list[str]:
    """`promtool check rules` on a rules file holding `groups`; its complaints, empty when valid."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        result = subprocess.run(
            [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
        )
    if result.returncode == 0:
        return []
    return [f"promtool check rules: {(result.stdout + result.stderr).strip()}"]


def kustomize_command() -> list[str]:
    """`kubectl kustomize` (kustomize is built into kubectl >= 1.14), else a standalone kustomize."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    raise RenderError(
        "neither kubectl nor kustomize is on PATH: install kubectl (it has kustomize built in; on "
        "Debian/Ubuntu the `kubectl` package from the Kubernetes apt repository) or the kustomize "
        "binary, then run `make validate-k8s` again"
    )


def render(kustomization: str | Path) -> list[dict[str, Any]]:
    """The objects `kustomize build` makes of k8s/<kustomization>, in its order."""
    folder = K8S / kustomization
    result = subprocess.run(
        [*kustomize_command(), str(folder)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RenderError(f"kustomize failed on {folder}:\n{result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _without_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value


def validate_operator_object(obj: dict[str, Any]) -> list[str]:
    """Errors in a Prometheus Operator object (ServiceMonitor, PrometheusRule): field types and
    patterns, any field the CRD does not know, and for rules whatever promtool finds."""
    from cloudcoil.models.prometheus_operator import v1
    from pydantic import ValidationError

    kind = obj.get("kind", "?")
    if kind not in ("ServiceMonitor", "PrometheusRule"):
        return [f"no schema for {kind} {obj.get('apiVersion')}"]
    try:
        model = getattr(v1, kind).model_validate(obj)
    except ValidationError as exc:
        return [str(exc)]
    # The model ignores unknown fields; a round trip that loses one means it was not in the CRD.
    kept = _without_nones(model.model_dump(by_alias=True, exclude_unset=True))
    spec_in, spec_out = obj.get("spec", {}), kept.get("spec", {})
    if spec_in != spec_out:
        return [f"spec has fields the {kind} CRD does not define: {spec_in} -> {spec_out}"]
    if kind == "PrometheusRule":
        return check_rules(spec_in.get("groups", []))
    return []


# --- KServe ---------------------------------------------------------------------------------------
# KServe's CRDs are not among kubernetes-validate's schemas. What follows is derived from KServe
# v0.20.0's CRDs (config/crd/full/serving.kserve.io_servingruntimes.yaml and
# serving.kserve.io_inferenceservices.yaml in kserve/kserve) and its protocol constants
# (pkg/constants). Checked: the field names of each spec (an unknown one is an error, as in the strict
# Kubernetes checks), the types and allowed values of KServe's own fields, and every embedded
# Kubernetes type (containers with their probes, ports and env, volumes, the predictor's pod fields,
# metadata) against Kubernetes' own schemas, by validating them as the Pod KServe would build.
# Not checked: the inside of KServe objects these manifests do not use (builtInAdapter, workerSpec,
# storageHelper, logger, batcher, autoScaling, deploymentStrategy, the transformer and explainer, the
# framework shorthands such as sklearn), and what only KServe's admission webhook knows (whether the
# runtime named exists in the cluster); tests/test_deploy_k8s.py checks that the two agree here.

KSERVE_PROTOCOLS = ("v1", "v2", "grpc-v1", "grpc-v2")
KSERVE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# ServingRuntimeSpec's own fields (JSON types), beside the pod fields it shares with a PodSpec.
RUNTIME_FIELDS: dict[str, type] = {
    "supportedModelFormats": list,
    "protocolVersions": list,
    "multiModel": bool,
    "disabled": bool,
    "annotations": dict,
    "labels": dict,
    "replicas": int,
    "grpcEndpoint": str,
    "grpcDataEndpoint": str,
    "httpDataEndpoint": str,
    "storageHelper": dict,
    "builtInAdapter": dict,
    "workerSpec": dict,
}
RUNTIME_POD_FIELDS = (
    "containers",
    "volumes",
    "nodeSelector",
    "affinity",
    "tolerations",
    "imagePullSecrets",
    "hostIPC",
    "schedulerName",
    "resourceClaims",
)
# The predictor's shorthands for KServe's built-in runtimes (not used here).
FRAMEWORKS = (
    "huggingface",
    "lightgbm",
    "onnx",
    "paddle",
    "pmml",
    "pytorch",
    "sklearn",
    "tensorflow",
    "triton",
    "xgboost",
)
# PredictorSpec's own fields; every other field it allows is a PodSpec field.
PREDICTOR_FIELDS: dict[str, type] = {
    "model": dict,
    "minReplicas": int,
    "maxReplicas": int,
    "scaleTarget": int,
    "scaleMetric": str,
    "scaleMetricType": str,
    "containerConcurrency": int,
    "timeout": int,
    "canaryTrafficPercent": int,
    "annotations": dict,
    "labels": dict,
    "deploymentStrategy": dict,
    "autoScaling": dict,
    "batcher": dict,
    "logger": dict,
    "storageUris": list,
    "storageContainerName": str,
    "workerSpec": dict,
    "name": str,
    **dict.fromkeys(FRAMEWORKS, dict),
}
PREDICTOR_ENUMS = {
    "scaleMetric": ("cpu", "memory", "concurrency", "rps"),
    "scaleMetricType": ("Utilization", "Value", "AverageValue"),
}
# ModelSpec: a Kubernetes Container plus these.
MODEL_FIELDS: dict[str, type] = {
    "modelFormat": dict,
    "runtime": str,
    "runtimeVersion": str,
    "protocolVersion": str,
    "storageUri": str,
    "storage": dict,
    "confidential": dict,
}
INFERENCE_SERVICE_FIELDS = ("predictor", "transformer", "explainer", "canary")


def pod_spec_fields(version: str) -> set[str]:
    """The field names of a Kubernetes PodSpec, from the schemas kubernetes-validate bundles."""
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    for name in (f"v{version}-local-strict", f"v{version}.0-local-strict"):
        path = folder / name / "podspec-v1.json"
        if path.is_file():
            return set(json.loads(path.read_text())["properties"])
    raise FileNotFoundError(f"no PodSpec schema for Kubernetes {version} in kubernetes-validate")


def _typed(fields: dict[str, Any], types: dict[str, type], where: str) -> list[str]:
    errors = []
    for key, value in fields.items():
        want = types[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            errors.append(f"{where}.{key}: {value!r} is not a {want.__name__}")
    return errors


def _as_pod(obj: dict[str, Any], pod_spec: dict[str, Any], versions: Iterable[str]) -> list[str]:
    """Kubernetes' own errors in the pod fields, containers and metadata of a KServe object."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": obj.get("metadata", {}), "spec": pod_spec}
    return [f"(as a Pod) {error}" for error in validate_object(pod, versions)]


def validate_serving_runtime(obj: dict[str, Any], versions: Iterable[str]) -> list[str]:
    spec = obj.get("spec", {})
    pod_fields = pod_spec_fields(kubernetes_validate.utils.latest_version())
    errors = [
        f"spec.{key}: not a ServingRuntime field"
        for key in spec
        if key not in RUNTIME_FIELDS and key not in RUNTIME_POD_FIELDS
    ]
    errors += _typed({k: v for k, v in spec.items() if k in RUNTIME_FIELDS}, RUNTIME_FIELDS, "spec")
    if not spec.get("containers"):
        errors.append("spec.containers: required, with at least one container")
    for index, model_format in enumerate(spec.get("supportedModelFormats") or []):
        where = f"spec.supportedModelFormats[{index}]"
        if not isinstance(model_format, dict) or not isinstance(model_format.get("name"), str):
            errors.append(f"{where}: needs a name")
            continue
        unknown = set(model_format) - {"name", "version", "autoSelect", "priority"}
        errors += [f"{where}.{key}: not a SupportedModelFormat field" for key in sorted(unknown)]
    for protocol in spec.get("protocolVersions") or []:
        if protocol not in KSERVE_PROTOCOLS:
            errors.append(f"spec.protocolVersions: {protocol!r} is not one of {KSERVE_PROTOCOLS}")
    pod = {k: v for k, v in spec.items() if k in RUNTIME_POD_FIELDS and k in pod_fields}
    return errors + _as_pod(obj, pod, versions)


def validate_inference_service(obj: dict[str, Any], versions: Iterable[str]) -> list[str]:
    spec = obj.get("spec", {})
    name = obj.get("metadata", {}).get("name", "")
    errors = [] if KSERVE_NAME.fullmatch(name) else [f"metadata.name: {name!r} is not a DNS label"]
    errors += [
        f"spec.{key}: not an InferenceService field"
        for key in spec
        if key not in INFERENCE_SERVICE_FIELDS
    ]
    predictor = spec.get("predictor")
    if not isinstance(predictor, dict):
        return [*errors, "spec.predictor: required"]
    pod_fields = pod_spec_fields(kubernetes_validate.utils.latest_version())
    own = {k: v for k, v in predictor.items() if k in PREDICTOR_FIELDS}
    errors += [
        f"spec.predictor.{key}: not a PredictorSpec field"
        for key in predictor
        if key not in PREDICTOR_FIELDS and key not in pod_fields
    ]
    errors += _typed(own, PREDICTOR_FIELDS, "spec.predictor")
    for key, allowed in PREDICTOR_ENUMS.items():
        if key in own and own[key] not in allowed:
            errors.append(f"spec.predictor.{key}: {own[key]!r} is not one of {allowed}")
    pod = {k: v for k, v in predictor.items() if k in pod_fields}
    model = predictor.get("model")
    if isinstance(model, dict):
        kserve = {k: v for k, v in model.items() if k in MODEL_FIELDS}
        errors += _typed(kserve, MODEL_FIELDS, "spec.predictor.model")
        model_format = kserve.get("modelFormat", {})
        if not isinstance(model_format, dict) or not isinstance(model_format.get("name"), str):
            errors.append("spec.predictor.model.modelFormat: needs a name")
        elif set(model_format) - {"name", "version"}:
            errors.append(f"spec.predictor.model.modelFormat: unknown fields in {model_format}")
        protocol = kserve.get("protocolVersion")
        if protocol is not None and protocol not in KSERVE_PROTOCOLS:
            errors.append(
                f"spec.predictor.model.protocolVersion: {protocol!r} is not one of "
                f"{KSERVE_PROTOCOLS}"
            )
        container = {k: v for k, v in model.items() if k not in MODEL_FIELDS}
        pod["containers"] = [{"name": "kserve-container", **container}, *pod.get("containers", [])]
    elif not pod.get("containers"):
        errors.append("spec.predictor: needs a model or containers")
    return errors + _as_pod(obj, pod, versions)


# --- Kubeflow PyTorchJob --------------------------------------------------------------------------
# The schema is the kubeflow-training SDK's models (kubeflow.training.models, a dev dependency),
# generated from the training-operator's Go API types (pkg/apis/kubeflow.org/v1), as its CRD is:
# each model's attribute_map names its JSON fields and openapi_types gives their types, so an
# unknown or misspelt field is an error, as in the strict Kubernetes checks. The enums are the Go
# constants the CRD declares (RDZVBackend in pytorch_types.go; RestartPolicy and CleanPodPolicy in
# common_types.go), the rules those of the operator's webhook (pytorch_validation.go), and each
# replica's pod template is checked by Kubernetes' own schemas as the Pod the operator makes of it.
# Not checked: elasticPolicy.metrics (an autoscaling/v2 MetricSpec; not used here, so an error) and
# what only a running operator knows.

PYTORCHJOB_ENUMS = {
    "rdzvBackend": ("c10d", "etcd", "etcd-v2"),
    "restartPolicy": ("Always", "OnFailure", "Never", "ExitCode"),
    "cleanPodPolicy": ("All", "Running", "None"),
}
PYTORCHJOB_REPLICA_TYPES = ("Master", "Worker")
PRIMITIVES: dict[str, type] = {"str": str, "int": int, "bool": bool}
# The embedded Kubernetes types the walk hands to kubernetes-validate instead (see below).
KUBERNETES_TYPES = ("V1PodTemplateSpec", "V1ObjectMeta")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _against_sdk_model(value: Any, type_name: str, where: str) -> list[str]:
    """Errors of `value` against the SDK's type `type_name` ("KubeflowOrgV1ElasticPolicy", "int",
    "dict(str, KubeflowOrgV1ReplicaSpec)", "list[KubeflowOrgV1RDZVConf]"...)."""
    import kubeflow.training.models as models

    if type_name in PRIMITIVES:
        want = PRIMITIVES[type_name]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            return [f"{where}: {value!r} is not a {want.__name__}"]
        allowed = PYTORCHJOB_ENUMS.get(where.rsplit(".", 1)[-1])
        if allowed and value not in allowed:
            return [f"{where}: {value!r} is not one of {allowed}"]
        return []
    if type_name.startswith("dict(str, "):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        inner = type_name.removeprefix("dict(str, ").removesuffix(")")
        return [e for k, v in value.items() for e in _against_sdk_model(v, inner, f"{where}.{k}")]
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        inner = type_name.removeprefix("list[").removesuffix("]")
        return [
            e for i, v in enumerate(value) for e in _against_sdk_model(v, inner, f"{where}[{i}]")
        ]
    if type_name in KUBERNETES_TYPES:
        return [] if isinstance(value, dict) else [f"{where}: expected a mapping"]
    model = getattr(models, type_name, None)
    if model is None:
        return [f"{where}: a {type_name}, which this validator does not check"]
    if not isinstance(value, dict):
        return [f"{where}: expected a mapping ({type_name})"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in by_json:
            errors.append(f"{where}.{key}: not a field of {type_name}")
        else:
            errors += _against_sdk_model(item, model.openapi_types[by_json[key]], f"{where}.{key}")
    return errors


def validate_pytorchjob(obj: dict[str, Any], versions: Iterable[str]) -> list[str]:
    """Errors in a kubeflow.org/v1 PyTorchJob: fields and types, the webhook's rules, the pods."""
    spec = obj.get("spec") or {}
    body = {k: v for k, v in obj.items() if k != "status"}
    errors = _against_sdk_model(body, "KubeflowOrgV1PyTorchJob", "PyTorchJob")
    name = obj.get("metadata", {}).get("name", "")
    if not DNS_1035.fullmatch(name) or len(name) > 63:
        errors.append(f"metadata.name: {name!r} is not a DNS-1035 label")
    replicas = spec.get("pytorchReplicaSpecs")
    if not isinstance(replicas, dict) or not replicas:
        return [*errors, "spec.pytorchReplicaSpecs: required"]
    policy = spec.get("elasticPolicy") or {}
    if "nprocPerNode" in spec and "nProcPerNode" in policy:
        errors.append("spec.elasticPolicy.nProcPerNode is deprecated: set spec.nprocPerNode only")
    for replica_type, replica in replicas.items():
        where = f"spec.pytorchReplicaSpecs.{replica_type}"
        if replica_type not in PYTORCHJOB_REPLICA_TYPES:
            errors.append(f"{where}: the replica type must be one of {PYTORCHJOB_REPLICA_TYPES}")
        if not isinstance(replica, dict):
            continue
        template = replica.get("template") or {}
        containers = (template.get("spec") or {}).get("containers") or []
        if not containers:
            errors.append(f"{where}: needs containers")
        if any(not c.get("image") for c in containers):
            errors.append(f"{where}: every container needs an image")
        if "pytorch" not in {c.get("name") for c in containers}:
            errors.append(f"{where}: needs a container named 'pytorch'")
        if replica_type == "Master" and replica.get("replicas", 1) != 1:
            errors.append(f"{where}.replicas: there must be exactly one Master")
        pod_owner = {"metadata": template.get("metadata") or {}}
        errors += [
            f"{where}.template {e}"
            for e in _as_pod(pod_owner, template.get("spec") or {}, versions)
        ]
    if policy and "Worker" not in replicas:
        errors.append("spec.elasticPolicy: the operator counts nodes by the Worker replicas")
    return errors


def validate_object(
    obj: dict[str, Any], versions: Iterable[str] = KUBERNETES_VERSIONS
) -> list[str]:
    """Every error found in one object; empty when it is valid for every version."""
    kind = obj.get("kind", "?")
    if obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        return validate_operator_object(obj)
    if obj.get("apiVersion") == "serving.kserve.io/v1alpha1" and kind == "ServingRuntime":
        return validate_serving_runtime(obj, versions)
    if obj.get("apiVersion") == "serving.kserve.io/v1beta1" and kind == "InferenceService":
        return validate_inference_service(obj, versions)
    if obj.get("apiVersion") == "kubeflow.org/v1" and kind == "PyTorchJob":
        return validate_pytorchjob(obj, versions)
    errors = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"Kubernetes {version}: {path}: {exc.message}")
        except SchemaNotFoundError as exc:
            errors.append(f"no schema for {kind} {obj.get('apiVersion')}: {exc.message}")
    return errors


def main() -> int:
    failures = 0
    for kustomization in KUSTOMIZATIONS:
        try:
            objects = render(kustomization)
        except RenderError as exc:
            print(f"FAIL k8s/{kustomization}: {exc}", file=sys.stderr)
            return 2
        for obj in objects:
            name = f"k8s/{kustomization}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            try:
                errors = validate_object(obj)
            except PromtoolMissing as exc:
                print(f"FAIL {name}: {exc}", file=sys.stderr)
                return 2
            failures += bool(errors)
            for error in errors:
                print(f"FAIL {name}: {error}", file=sys.stderr)
            if not errors:
                print(f"ok   {name}")
    versions = " and ".join(KUBERNETES_VERSIONS)
    if failures:
        print(f"{failures} invalid objects (Kubernetes {versions})", file=sys.stderr)
        return 1
    print(f"every object valid for Kubernetes {versions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
