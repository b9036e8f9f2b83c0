"""The Kubernetes manifests (infra/k8s, docs/deploy.md): valid offline, and in step with the code.

Every object validates against the Kubernetes schemas of ``K8S_VERSION`` (kubernetes-validate,
strict: an unknown field is an error). KEDA's ScaledObject (a custom resource, not in those
schemas) is checked against a small schema of the fields we use, and its streams and consumers
against contracts/streams.py. The workers, their NATS users and every SB_ variable are derived
from the code (ops/registry.py, the settings classes), not listed here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from contracts.streams import CONSUMERS, STREAMS
from contracts.subjects import AUDIO_PARTITIONS
from edge.settings import EdgeSettings
from ops import access, registry
from workers.runtime.settings import ENV_PREFIX, RuntimeSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
K8S_VERSION = "1.33"
# Kinds that are not Kubernetes API objects or not in its schemas, and how they are checked instead.
NOT_IN_KUBERNETES_SCHEMAS = {
    "Kustomization": "kustomize's own file: test_kustomization_lists_the_deployment",
    "ScaledObject": "KEDA custom resource: test_scaled_objects_name_real_streams_and_consumers",
}
NATS_PASSWORDS = "switchboard-nats-passwords"  # the Secret gen_nats_auth.py's passwords.env becomes
APP_SECRETS = "switchboard-secrets"

Doc = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def objects() -> list[tuple[Path, Doc]]:
    return [(path, doc) for path in manifest_files() for doc in load(path)]


def of_kind(kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for _, doc in objects() if doc["kind"] == kind and "metadata" in doc}


def containers(doc: Doc) -> list[Doc]:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    found: list[Doc] = spec["template"]["spec"]["containers"]
    return found


def settings_classes() -> dict[str, type[RuntimeSettings]]:
    """Each process's settings class, from the code: the registry's workers and the edge."""
    return {**{name: registry.load(name).settings_type for name in registry.WORKERS}, "edge": EdgeSettings}


def env_names(cls: type[RuntimeSettings]) -> set[str]:
    return {f"{ENV_PREFIX}{field.upper()}" for field in cls.model_fields}


def known_settings() -> set[str]:
    return set().union(*(env_names(cls) for cls in settings_classes().values()))


def used_sb_names() -> dict[str, set[str]]:
    """Every SB_ name the manifests set or read, with where."""
    used: dict[str, set[str]] = {}

    def note(name: str, where: str) -> None:
        if name.startswith(ENV_PREFIX):
            used.setdefault(name, set()).add(where)

    for path, doc in objects():
        where = f"{path.relative_to(K8S)}: {doc['kind']}/{doc.get('metadata', {}).get('name', '')}"
        if doc["kind"] == "ConfigMap":
            for key in doc.get("data", {}):
                note(key, where)
        if doc["kind"] == "Secret":
            for key in [*doc.get("stringData", {}), *doc.get("data", {})]:
                note(key, where)
        if doc["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob"):
            for container in containers(doc):
                for var in container.get("env", []):
                    note(var["name"], where)
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref["name"] != NATS_PASSWORDS:
                        note(ref["key"], where)
    return used


@pytest.mark.parametrize(
    ("path", "doc"), objects(), ids=lambda v: str(v.relative_to(K8S)) if isinstance(v, Path) else v["kind"]
)
def test_every_manifest_validates_against_the_kubernetes_schema(path: Path, doc: Doc) -> None:
    if doc["kind"] in NOT_IN_KUBERNETES_SCHEMAS:
        pytest.skip(f"{doc['kind']}: {NOT_IN_KUBERNETES_SCHEMAS[doc['kind']]}")
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        field = ".".join(str(p) for p in error.path)
        pytest.fail(f"{path.relative_to(K8S)}: {doc['kind']}/{doc['metadata']['name']}: {field}: {error.message}")


def test_every_worker_and_the_edge_run_as_a_deployment_as_the_stack_starts_them() -> None:
    deployments = of_kind("Deployment")
    for service in registry.SERVICES:
        module = "edge" if service == "edge" else f"workers.{service}"
        assert importlib.util.find_spec(module) is not None, module
        assert service in deployments, f"no Deployment for {service} (infra/k8s/workers/{service}.yaml)"
        (container,) = containers(deployments[service])
        assert container["command"] == ["python", "-m", module], service
    started = {
        c["command"][2].removeprefix("workers.")
        for doc in deployments.values()
        for c in containers(doc)
        if c["command"][:2] == ["python", "-m"] and c["command"][2].startswith("workers.")
    }
    assert started <= set(registry.WORKERS), f"Deployments of workers the code does not have: {started}"


def test_the_kustomization_lists_the_deployment() -> None:
    (kustomization,) = load(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert all((K8S / name).is_file() for name in listed), listed
    # Everything but the example Secret, the one-off Jobs and the optional extras is applied.
    by_hand = {"secrets.example.yaml"}
    applied = {
        str(p.relative_to(K8S))
        for p in manifest_files()
        if p.name != "kustomization.yaml" and p.parts[len(K8S.parts)] not in ("jobs", "optional")
    }
    assert applied - by_hand == listed
    assert {f"workers/{w}.yaml" for w in registry.WORKERS} <= listed


def test_every_process_connects_as_its_own_nats_user() -> None:
    for name, deployment in of_kind("Deployment").items():
        (container,) = containers(deployment)
        env = {var["name"]: var for var in container["env"]}
        assert env["SB_NATS_USER"]["value"] == name
        ref = env["SB_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (NATS_PASSWORDS, name)
    for job in of_kind("Job").values():
        for container in containers(job):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef", {})
                if ref.get("name") == NATS_PASSWORDS:
                    assert ref["key"] in access.USERS


def test_every_sb_variable_in_the_manifests_is_a_setting() -> None:
    unknown = {name: sorted(where) for name, where in used_sb_names().items() if name not in known_settings()}
    assert not unknown, f"not a setting of any process (docs/configuration.md): {unknown}"


def test_a_deployment_sets_only_its_own_process_settings() -> None:
    classes = settings_classes()
    for name, deployment in of_kind("Deployment").items():
        own = env_names(classes[name])
        (container,) = containers(deployment)
        foreign = {v["name"] for v in container["env"] if v["name"].startswith(ENV_PREFIX)} - own
        assert not foreign, f"{name} does not read {foreign}"


def test_secrets_are_not_in_config_maps() -> None:
    secret = {
        f"{ENV_PREFIX}{field.upper()}"
        for cls in settings_classes().values()
        for field, info in cls.model_fields.items()
        if "Secret" in str(info.annotation)
    }
    for config in of_kind("ConfigMap").values():
        assert not secret & set(config.get("data", {}))
    app_secrets = {
        ref["key"]
        for deployment in of_kind("Deployment").values()
        for container in containers(deployment)
        for var in container["env"]
        if (ref := var.get("valueFrom", {}).get("secretKeyRef")) and ref["name"] == APP_SECRETS
    }
    assert app_secrets <= secret
    assert app_secrets <= set(of_kind("Secret")[APP_SECRETS]["stringData"])  # the example names them all


def test_nats_cluster_config_matches_the_code() -> None:
    conf = of_kind("ConfigMap")["nats-config"]["data"]["nats.conf"]
    local = (ROOT / "infra" / "nats.conf").read_text()
    mapping = re.compile(r'^\s*"\*\.audio\.\*\.in":.*$', re.MULTILINE)
    assert mapping.search(conf) and mapping.search(local)
    assert mapping.search(conf)[0].strip() == mapping.search(local)[0].strip()  # type: ignore[index]
    assert f"partition({AUDIO_PARTITIONS},2)" in conf
    nats = of_kind("StatefulSet")["nats"]
    nodes = [f"nats-{i}.nats-headless" for i in range(nats["spec"]["replicas"])]
    assert all(f"nats://{node}:6222" in conf for node in nodes)
    urls = of_kind("ConfigMap")["switchboard-config"]["data"]["SB_NATS_URL"].split(",")
    assert urls == [f"nats://{node}:4222" for node in nodes]
    replicas = int(of_kind("ConfigMap")["switchboard-config"]["data"]["SB_STREAM_REPLICAS"])
    assert replicas == nats["spec"]["replicas"] >= max(s.replicas for s in STREAMS)


def scaling_kind(worker: str) -> str:
    """How replicas of a worker share work, from its declared consumptions."""
    consumptions = registry.load(worker).consumptions()
    if any(c.delivery == "partitioned" for c in consumptions):
        return "partitioned"
    if any(c.queue or c.delivery == "jetstream" for c in consumptions):
        return "shared"
    return "every replica sees everything"


def test_autoscalers_target_only_workers_whose_replicas_share_work() -> None:
    deployments = of_kind("Deployment")
    targets = [hpa["spec"]["scaleTargetRef"]["name"] for hpa in of_kind("HorizontalPodAutoscaler").values()]
    targets += [so["spec"]["scaleTargetRef"]["name"] for so in of_kind("ScaledObject").values()]
    for name in targets:
        assert name in deployments, name
        if name != "edge":
            assert scaling_kind(name) == "shared", f"{name} is {scaling_kind(name)}: not autoscaled"
    for name in registry.WORKERS:
        if scaling_kind(name) == "every replica sees everything" and name in deployments:
            # e.g. voice: two replicas would both act on every message (docs/voice.md)
            spec = deployments[name]["spec"]
            assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", name
    transcriber = deployments["transcriber"]["spec"]["replicas"]
    assert scaling_kind("transcriber") == "partitioned"
    assert transcriber <= AUDIO_PARTITIONS, "replicas past AUDIO_PARTITIONS own no partition"


SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                },
                **{
                    key: {"type": "integer", "minimum": 0}
                    for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod")
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"enum": ["nats-jetstream", "cpu", "memory"]},
                            "metricType": {"enum": ["Utilization", "AverageValue"]},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
}
NATS_JETSTREAM_TRIGGER = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"}


def test_scaled_objects_name_real_streams_and_consumers() -> None:
    consumers = {c.durable: c.stream for c in CONSUMERS}  # the default prefix's names
    for name, scaled in of_kind("ScaledObject").items():
        jsonschema.Draft202012Validator(SCALED_OBJECT).validate(scaled)
        worker = scaled["spec"]["scaleTargetRef"]["name"]
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] != "nats-jetstream":
                continue
            meta = trigger["metadata"]
            assert set(meta) >= NATS_JETSTREAM_TRIGGER, name
            assert consumers.get(meta["consumer"]) == meta["stream"], (name, meta)
            assert any(d.durable == meta["consumer"] for d in registry.load(worker).consumers()), (
                f"{worker} does not read consumer {meta['consumer']}"
            )
            host = meta["natsServerMonitoringEndpoint"].split(".")[0]
            assert host == "nats-headless", "the scaler asks the consumer's leader through the headless Service"


def test_the_nats_auth_generator_covers_every_user(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_nats_auth", K8S / "gen_nats_auth.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    conf, env = module.write(tmp_path)
    passwords = dict(line.split("=", 1) for line in env.read_text().splitlines())
    assert set(passwords) == set(access.USERS)
    text = conf.read_text()
    assert text.startswith("authorization {")
    assert all(f'"user": "{user}"' in text for user in access.USERS)
    assert not any(password in text for password in passwords.values())  # hashes only
    assert conf.stat().st_mode & 0o777 == 0o600 and env.stat().st_mode & 0o777 == 0o600
    referenced = {
        ref["key"]
        for _, doc in objects()
        if doc["kind"] in ("Deployment", "Job")
        for container in containers(doc)
        for var in container.get("env", [])
        if (ref := var.get("valueFrom", {}).get("secretKeyRef")) and ref["name"] == NATS_PASSWORDS
    }
    assert referenced <= set(passwords)
    assert module.write(tmp_path)[1].read_text() == env.read_text()  # a second run keeps the passwords


def test_a_worker_is_ready_when_its_own_health_says_so() -> None:
    deployments = of_kind("Deployment")
    for worker in registry.WORKERS:
        (container,) = containers(deployments[worker])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert "metrics" in ports, worker  # the probes' port (workers/runtime/metrics.py serves them)
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, worker
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, worker
        assert env.get("SB_METRICS_PORT", str(ports["metrics"])) == str(ports["metrics"]), worker
