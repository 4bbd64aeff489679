"""Render every kustomization under k8s/ and validate each object against its schema, offline.

Kubernetes kinds are checked against the OpenAPI schemas that kubernetes-validate bundles (strict:
an unknown field is an error), for the oldest and the newest Kubernetes version we support; the
ServiceMonitor and the PrometheusRule against the Prometheus Operator's CRDs, through cloudcoil's
models of them, and the PrometheusRule's rules with `promtool check rules` (Debian package
`prometheus`). An object of a kind with no schema here is an error too, so nothing passes unchecked.
Run with `make validate-k8s`.
"""

from __future__ import annotations

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
KUSTOMIZATIONS = ("base", "overlays/cpu", "overlays/gpu", "jobs", "monitoring", "autoscaling")
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


def validate_object(
    obj: dict[str, Any], versions: Iterable[str] = KUBERNETES_VERSIONS
) -> list[str]:
    """Every error found in one object; empty when it is valid for every version."""
    kind = obj.get("kind", "?")
    if obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        return validate_operator_object(obj)
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
