"""The training manifests (k8s/training, k8s/storage) as kustomize renders them, read the way the
cluster would run them: torchrun's own argument parser on each container's command with the PET_*
variables the training-operator or the Job sets, vae-train's own parser on the pod's VAE_*
variables, the Indexed Job's shell line run for real. Schema validity is in test_deploy_k8s.py."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy_k8s import cpu_cores, one, validator

LAUNCHERS = ("training/pytorchjob", "training/indexed-job")
GPU_LAUNCHERS = ("training/pytorchjob-gpu", "training/indexed-job-gpu")
ALL_LAUNCHERS = LAUNCHERS + GPU_LAUNCHERS


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    names = ("base", "jobs", "storage", *ALL_LAUNCHERS)
    return {name: validator.render(name) for name in names}


def trainer(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The training object: the PyTorchJob or the Job named vae-train."""
    (found,) = [o for o in objects if o["kind"] in ("PyTorchJob", "Job")]
    return found


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    obj = trainer(objects)
    if obj["kind"] == "PyTorchJob":
        return obj["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = pod_spec(objects)["containers"]
    return found


def operator_env(job: dict[str, Any]) -> dict[str, str]:
    """The PET_* variables training-operator v1.9 gives each Worker of an elastic PyTorchJob
    (pkg/controller.v1/pytorch/elastic.go): the rendezvous on pod <name>-worker-0 at the port
    named pytorchjob-port, nodes as minReplicas:maxReplicas, the restarts and the rendezvous id."""
    policy = job["spec"]["elasticPolicy"]
    (pytorch,) = [c for c in container_list(job) if c["name"] == "pytorch"]
    port = next(p["containerPort"] for p in pytorch["ports"] if p["name"] == "pytorchjob-port")
    return {
        "PET_RDZV_ENDPOINT": f"{job['metadata']['name']}-worker-0:{port}",
        "PET_RDZV_BACKEND": policy.get("rdzvBackend", "c10d"),
        "PET_NNODES": f"{policy['minReplicas']}:{policy['maxReplicas']}",
        "PET_MAX_RESTARTS": str(policy["maxRestarts"]),
        "PET_RDZV_ID": policy["rdzvId"],
    }


def container_list(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]


def pod_environment(objects: list[dict[str, Any]]) -> dict[str, str]:
    """What the container's process sees: the ConfigMap, its own env (resource fields resolved as
    the downward API does: rounded up), and for a PyTorchJob what the operator adds."""
    environment = dict(one(objects, "ConfigMap", "vae-train-config")["data"])
    spec = container(objects)
    for entry in spec.get("env", []):
        if "value" in entry:
            environment[entry["name"]] = entry["value"]
        else:
            field = entry["valueFrom"]["resourceFieldRef"]
            kind, resource = field["resource"].split(".")
            cores = cpu_cores(spec["resources"][kind][resource]) / cpu_cores(field["divisor"])
            environment[entry["name"]] = str(-int(-cores // 1))
    if trainer(objects)["kind"] == "PyTorchJob":
        environment.update(operator_env(trainer(objects)))
    return environment


def launched_argv(objects: list[dict[str, Any]], index: int, tmp_path: Path) -> list[str]:
    """torchrun's arguments as the pod at `index` starts it: the Indexed Job's shell line is run
    by /bin/sh with a stand-in torchrun on PATH that prints what it was given."""
    spec = container(objects)
    command = [*spec["command"], *spec.get("args", [])]
    if command[0] == "torchrun":
        return command[1:]
    stand_in = tmp_path / "torchrun"
    stand_in.write_text(
        "#!/bin/sh\nexec python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n"
    )
    stand_in.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "JOB_COMPLETION_INDEX": str(index)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def torchrun_args(objects, index: int, tmp_path: Path, monkeypatch):
    """torchrun's parsed options in the pod at `index` (its parser reads PET_* when built)."""
    from torch.distributed.run import get_args_parser

    for name in [n for n in os.environ if n.startswith("PET_")]:
        monkeypatch.delenv(name)
    for name, value in pod_environment(objects).items():
        if name.startswith("PET_"):
            monkeypatch.setenv(name, value)
    return get_args_parser().parse_args(launched_argv(objects, index, tmp_path))


def train_config(objects, monkeypatch):
    """The TrainConfig vae-train builds in the pod from its VAE_* variables (no flags)."""
    from training import cli

    for name in [n for n in os.environ if n.startswith("VAE_")]:
        monkeypatch.delenv(name)
    for name, value in pod_environment(objects).items():
        if name.startswith("VAE_"):
            monkeypatch.setenv(name, value)
    return cli.parse_config([])


def mount_of(objects, claim: str) -> dict[str, Any]:
    """The container's mount of the volume that holds `claim`."""
    volume = next(
        v["name"]
        for v in pod_spec(objects)["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    )
    return next(m for m in container(objects)["volumeMounts"] if m["name"] == volume)


# ----------------------------------------------------------------------- torchrun in the pods


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_every_pod_runs_vae_trains_module_under_torchrun(rendered, launcher, tmp_path, monkeypatch):
    args = torchrun_args(rendered[launcher], 0, tmp_path, monkeypatch)
    assert (args.module, args.training_script, args.training_script_args) == (
        True,
        "training.cli",
        [],
    )


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_pods_meet_through_a_c10d_rendezvous_of_two_nodes(
    rendered, launcher, tmp_path, monkeypatch
):
    from torch.distributed.run import parse_min_max_nnodes

    args = torchrun_args(rendered[launcher], 0, tmp_path, monkeypatch)
    assert (args.rdzv_backend, parse_min_max_nnodes(args.nnodes)) == ("c10d", (2, 2))


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_torchrun_restarts_a_dead_worker_group(rendered, launcher, tmp_path, monkeypatch):
    assert torchrun_args(rendered[launcher], 0, tmp_path, monkeypatch).max_restarts >= 1


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_agents_keep_a_rendezvous_store_per_round(rendered, launcher):
    # Without it a recreated pod's rendezvous round never completes (pytorch/pytorch#135712).
    assert pod_environment(rendered[launcher])["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_one_process_per_pod(rendered, launcher, tmp_path, monkeypatch):
    assert torchrun_args(rendered[launcher], 0, tmp_path, monkeypatch).nproc_per_node == "1"


@pytest.mark.parametrize("launcher", ("training/pytorchjob", "training/pytorchjob-gpu"))
def test_pytorchjob_runs_as_many_workers_as_rendezvous_nodes(rendered, launcher):
    job = trainer(rendered[launcher])
    policy = job["spec"]["elasticPolicy"]
    workers = job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"]
    assert (
        set(job["spec"]["pytorchReplicaSpecs"]),
        policy["minReplicas"],
        policy["maxReplicas"],
    ) == (
        {"Worker"},
        workers,
        workers,
    )


@pytest.mark.parametrize("launcher", ("training/indexed-job", "training/indexed-job-gpu"))
def test_only_pod_zero_hosts_the_rendezvous_store(rendered, launcher, tmp_path, monkeypatch):
    hosts = [
        torchrun_args(rendered[launcher], index, tmp_path, monkeypatch).rdzv_conf
        for index in (0, 1)
    ]
    assert hosts == ["is_host=true", "is_host=false"]


@pytest.mark.parametrize("launcher", ("training/indexed-job", "training/indexed-job-gpu"))
def test_rendezvous_endpoint_is_pod_zeros_name_under_the_headless_service(
    rendered, launcher, tmp_path, monkeypatch
):
    job = trainer(rendered[launcher])
    service = one(rendered[launcher], "Service", job["spec"]["template"]["spec"]["subdomain"])
    endpoint = torchrun_args(rendered[launcher], 1, tmp_path, monkeypatch).rdzv_endpoint
    host, port = endpoint.rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert int(port) in {p["containerPort"] for p in container(rendered[launcher])["ports"]}


@pytest.mark.parametrize("launcher", ("training/indexed-job", "training/indexed-job-gpu"))
def test_headless_service_selects_the_training_pods(rendered, launcher):
    selector = one(rendered[launcher], "Service", "vae-train")["spec"]["selector"]
    labels = trainer(rendered[launcher])["spec"]["template"]["metadata"]["labels"]
    assert selector and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("launcher", ("training/indexed-job", "training/indexed-job-gpu"))
def test_indexed_job_runs_one_pod_per_rendezvous_node(rendered, launcher, tmp_path, monkeypatch):
    from torch.distributed.run import parse_min_max_nnodes

    spec = trainer(rendered[launcher])["spec"]
    nodes, _ = parse_min_max_nnodes(
        torchrun_args(rendered[launcher], 0, tmp_path, monkeypatch).nnodes
    )
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == (
        "Indexed",
        nodes,
        nodes,
    )


# ------------------------------------------------------------------------ vae-train in the pods


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_pods_resume_from_their_checkpoint_when_relaunched(rendered, launcher, monkeypatch):
    assert train_config(rendered[launcher], monkeypatch).auto_resume is True


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_run_directory_is_on_the_claim_the_export_job_reads(rendered, launcher, monkeypatch):
    from export.cli import build_parser as export_parser

    run_dir = Path(train_config(rendered[launcher], monkeypatch).run_dir)
    mount = mount_of(rendered[launcher], "vae-checkpoints")
    export = one(rendered["jobs"], "Job", "vae-export")["spec"]["template"]["spec"]
    source = str(export_parser().parse_args(export["containers"][0]["args"]).source)
    export_volume = next(
        m["name"] for m in export["containers"][0]["volumeMounts"] if m["mountPath"] == source
    )
    export_claim = next(v for v in export["volumes"] if v["name"] == export_volume)
    assert run_dir.is_relative_to(mount["mountPath"]) and not mount.get("readOnly", False)
    assert export_claim["persistentVolumeClaim"]["claimName"] == "vae-checkpoints"


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_data_comes_from_the_datasets_claim_read_only(rendered, launcher, monkeypatch):
    mount = mount_of(rendered[launcher], "vae-datasets")
    data_dir = train_config(rendered[launcher], monkeypatch).data_dir
    assert (data_dir, mount["readOnly"]) == (mount["mountPath"], True)


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_torch_threads_follow_the_cpu_limit(rendered, launcher, monkeypatch):
    limit = cpu_cores(container(rendered[launcher])["resources"]["limits"]["cpu"])
    assert train_config(rendered[launcher], monkeypatch).threads == limit


@pytest.mark.parametrize("launcher", GPU_LAUNCHERS)
def test_gpu_pods_ask_for_one_gpu_and_train_on_it(rendered, launcher, monkeypatch):
    resources = container(rendered[launcher])["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert train_config(rendered[launcher], monkeypatch).device == "cuda"


@pytest.mark.parametrize("launcher", GPU_LAUNCHERS)
def test_gpu_pods_schedule_on_gpu_nodes(rendered, launcher):
    spec = pod_spec(rendered[launcher])
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "nvidia.com/gpu" in {t["key"] for t in spec["tolerations"]}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_cpu_pods_ask_for_no_gpu_and_pick_their_device(rendered, launcher, monkeypatch):
    resources = container(rendered[launcher])["resources"]
    assert not any("nvidia.com/gpu" in resources[k] for k in ("requests", "limits"))
    assert train_config(rendered[launcher], monkeypatch).device == "auto"


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_pods_have_shared_memory_for_dataloader_workers(rendered, launcher):
    shm = next(
        m for m in container(rendered[launcher])["volumeMounts"] if m["mountPath"] == "/dev/shm"
    )
    volume = next(v for v in pod_spec(rendered[launcher])["volumes"] if v["name"] == shm["name"])
    assert volume["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_training_runs_the_train_image(rendered, launcher):
    assert container(rendered[launcher])["image"].rsplit(":", 1)[0].endswith("/vae-train")


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("runAsNonRoot", True),
        ("readOnlyRootFilesystem", True),
        ("allowPrivilegeEscalation", False),
        ("capabilities", {"drop": ["ALL"]}),
    ],
)
def test_training_container_meets_the_restricted_standard(rendered, launcher, setting, value):
    assert container(rendered[launcher])["securityContext"][setting] == value


# ------------------------------------------------------------------------------- shared storage


@pytest.mark.parametrize(
    ("kind", "name"), [("Namespace", "vae"), ("PersistentVolumeClaim", "vae-model-repository")]
)
def test_storage_repeats_the_bases_objects_exactly(rendered, kind, name):
    assert one(rendered["storage"], kind, name) == one(rendered["base"], kind, name)


@pytest.mark.parametrize("claim", ["vae-checkpoints", "vae-datasets", "vae-model-repository"])
def test_claims_every_node_mounts_are_read_write_many(rendered, claim):
    pvc = one(rendered["storage"], "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_launchers_render_the_storage_objects_unchanged(rendered, launcher):
    for obj in rendered["storage"]:
        assert one(rendered[launcher], obj["kind"], obj["metadata"]["name"]) == obj


# ---------------------------------------------------------------------- the PyTorchJob validator


def pytorchjob(rendered) -> dict[str, Any]:
    return copy.deepcopy(trainer(rendered["training/pytorchjob"]))


def test_validator_rejects_a_misspelt_elastic_policy_field(rendered):
    job = pytorchjob(rendered)
    job["spec"]["elasticPolicy"]["rdzvBackEnd"] = job["spec"]["elasticPolicy"].pop("rdzvBackend")
    assert validator.validate_object(job)


def test_validator_rejects_a_rendezvous_backend_the_crd_lacks(rendered):
    job = pytorchjob(rendered)
    job["spec"]["elasticPolicy"]["rdzvBackend"] = "gloo"
    assert validator.validate_object(job)


def test_validator_rejects_a_replica_count_that_is_not_a_number(rendered):
    job = pytorchjob(rendered)
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "2"
    assert validator.validate_object(job)


def test_validator_rejects_an_unknown_replica_type(rendered):
    job = pytorchjob(rendered)
    job["spec"]["pytorchReplicaSpecs"]["Chief"] = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert validator.validate_object(job)


def test_validator_wants_the_container_named_pytorch(rendered):
    job = pytorchjob(rendered)
    container_list(job)[0]["name"] = "trainer"
    assert validator.validate_object(job)


def test_validator_checks_the_pod_template_as_kubernetes_does(rendered):
    job = pytorchjob(rendered)
    container_list(job)[0]["ports"][0]["containerPort"] = "rendezvous"
    assert validator.validate_object(job)


def test_validator_accepts_the_rendered_pytorchjob(rendered):
    assert validator.validate_object(pytorchjob(rendered)) == []


@pytest.mark.parametrize("launcher", ALL_LAUNCHERS)
def test_network_policy_admits_only_the_other_training_pods(rendered, launcher):
    spec = one(rendered[launcher], "NetworkPolicy", "vae-train")["spec"]
    obj = trainer(rendered[launcher])
    template = (
        obj["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
        if obj["kind"] == "PyTorchJob"
        else obj["spec"]["template"]
    )
    labels = template["metadata"]["labels"]
    (rule,) = spec["ingress"]
    (source,) = rule["from"]
    selectors = [spec["podSelector"]["matchLabels"], source["podSelector"]["matchLabels"]]
    assert all(s and all(labels.get(k) == v for k, v in s.items()) for s in selectors)
