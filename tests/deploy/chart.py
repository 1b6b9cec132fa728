"""Render deploy/helm/headhub offline and check what it renders.

Rendering is Helm's own engine: `helm-python-sdk` binds (ctypes) to libhelm_c, a C ABI over
Helm's official Go SDK (v4), shipped inside the wheel, so the templates are rendered exactly as
`helm template` / `helm install` would, with no helm binary, cluster or network.

Schema validation is `kubernetes-validate`, which bundles the Kubernetes API's JSON schemas per
minor version (1.25 to 1.37 in 1.37.0); the strict variants reject unknown fields. Each check
below returns a list of problems (empty: fine) so the tests can show that a broken chart is
reported, not only that the real one passes.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "headhub"
RELEASE = "hh"
NAMESPACE = "headhub"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())

DATABASE_URL = "postgresql+psycopg://headhub:db-password-123@postgres.db:5432/headhub"
ADMIN_KEY = "admin-key-" + "k" * 40
KEY_PEPPER = "pepper-" + "p" * 57
REDIS_URL = "redis://:redis-password-456@redis.cache:6379/0"

# What an operator must set for the default (directory-blob) install.
REQUIRED: dict[str, Any] = {
    "image": {"repository": "registry.example.com/headhub", "tag": "0.1.0"},
    "secrets": {"databaseUrl": DATABASE_URL, "adminKey": ADMIN_KEY, "keyPepper": KEY_PEPPER},
}
# The multi-node shape: S3 blobs, Redis, an existing Secret, fixed replicas.
S3: dict[str, Any] = {
    "image": {"repository": "registry.example.com/headhub", "tag": "0.1.0"},
    "secrets": {"existingSecret": "headhub-prod"},
    "blobs": {
        "backend": "s3",
        "s3": {"url": "s3://headhub-blobs/prod", "credentialsSecret": "headhub-s3"},
    },
    "api": {"autoscaling": {"enabled": False}, "replicas": 3},
    "extractor": {"autoscaling": {"enabled": False}, "replicas": 2},
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class Rendered:
    """One rendered release: its objects, in template order."""

    objects: list[dict[str, Any]]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def workloads(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(object, pod spec) of every Deployment, Job and CronJob."""
        for o in self.objects:
            if o["kind"] in ("Deployment", "Job"):
                yield o, o["spec"]["template"]["spec"]
            elif o["kind"] == "CronJob":
                yield o, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def render(
    values: dict[str, Any] | None = None, chart: Path = CHART, *, upgrade: bool = False
) -> Rendered:
    """The objects `helm install` (or `helm upgrade`) would send, hooks included."""
    with helm.Chart.load(chart) as c:
        manifests = c.render(
            REQUIRED if values is None else values,
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=not upgrade,
            is_upgrade=upgrade,
        )
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [d for d in yaml.safe_load_all(text) if d]
    return Rendered(objects)


def copy_chart(tmp: Path) -> Path:
    """A scratch copy of the chart that a test may break."""
    dest = tmp / "headhub"
    shutil.copytree(CHART, dest)
    return dest


def full(name: str) -> str:
    return f"{RELEASE}-headhub-{name}"


# --- checks: each returns a list of problems ---------------------------------------------------


def schema_problems(objects: list[dict[str, Any]], version: str) -> list[str]:
    """Every object against the strict Kubernetes `version` schema of its kind."""
    problems = []
    for o in objects:
        name = f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            problems.append(f"{name} at {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{name}: {exc.message}")
    return problems


def probe_problems(r: Rendered, components: tuple[str, ...] = ("api", "extractor")) -> list[str]:
    """Each component: startup and liveness /healthz, readiness /readyz, on a declared port."""
    problems = []
    for component in components:
        (c,) = r.get("Deployment", full(component))["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe, path in (
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ):
            got = c.get(probe, {}).get("httpGet")
            if got is None:
                problems.append(f"{component}: no {probe} httpGet")
                continue
            if got.get("path") != path:
                problems.append(f"{component}: {probe} on {got.get('path')}, not {path}")
            if got.get("port") not in ports and got.get("port") not in ports.values():
                problems.append(f"{component}: {probe} port {got.get('port')} is not declared")
    return problems


def security_problems(r: Rendered) -> list[str]:
    """Non-root, read-only root filesystem, no escalation, no capabilities, writable /tmp,
    requests and limits, no service-account token: every container of every workload."""
    problems = []
    for o, pod in r.workloads():
        where = f"{o['kind']}/{o['metadata']['name']}"
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
            problems.append(f"{where}: pod not runAsNonRoot with a uid")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: mounts a service-account token")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod.get("initContainers", []) + pod["containers"]:
            cwhere = f"{where}/{c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cwhere}: root filesystem not read-only")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cwhere}: privilege escalation allowed")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{cwhere}: capabilities not dropped")
            if sc.get("runAsNonRoot") is not True:
                problems.append(f"{cwhere}: container not runAsNonRoot")
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                problems.append(f"{cwhere}: /tmp is not a writable emptyDir")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(part, {})):
                    problems.append(f"{cwhere}: no cpu and memory {part}")
    return problems


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def wiring_problems(r: Rendered) -> list[str]:
    """Services, PDBs and HPAs point at the Deployments they are meant for."""
    problems = []
    deployments = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in r.of("Deployment")
    }
    for d in r.of("Deployment"):
        if not selects(d["spec"]["selector"]["matchLabels"], deployments[d["metadata"]["name"]]):
            problems.append(f"Deployment/{d['metadata']['name']}: selector misses its own pods")
    for kind, selector_of in (
        ("Service", lambda o: o["spec"]["selector"]),
        ("PodDisruptionBudget", lambda o: o["spec"]["selector"]["matchLabels"]),
    ):
        for o in r.of(kind):
            hits = [n for n, labels in deployments.items() if selects(selector_of(o), labels)]
            if len(hits) != 1:
                problems.append(f"{kind}/{o['metadata']['name']} selects {hits}")
    for s in r.of("Service"):
        hits = [
            d
            for d in r.of("Deployment")
            if selects(s["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        for d in hits:
            names = {
                p["name"] for c in d["spec"]["template"]["spec"]["containers"] for p in c["ports"]
            }
            for p in s["spec"]["ports"]:
                if p["targetPort"] not in names:
                    problems.append(f"Service/{s['metadata']['name']}: no port {p['targetPort']}")
    for h in r.of("HorizontalPodAutoscaler"):
        target = h["spec"]["scaleTargetRef"]
        if target["kind"] != "Deployment" or target["name"] not in deployments:
            problems.append(f"HPA/{h['metadata']['name']} scales a missing {target}")
        elif "replicas" in r.get("Deployment", target["name"])["spec"]:
            problems.append(f"Deployment/{target['name']} sets replicas under an HPA")
    return problems


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_values(r: Rendered) -> dict[str, str]:
    """(Secret/key -> decoded value) of every rendered Secret."""
    return {
        f"{s['metadata']['name']}/{k}": base64.b64decode(v).decode()
        for s in r.of("Secret")
        for k, v in s.get("data", {}).items()
    }


def inlined_secret_problems(r: Rendered, values: list[str]) -> list[str]:
    """No secret value appears anywhere outside a Secret object."""
    problems = []
    for o in r.objects:
        if o["kind"] == "Secret":
            continue
        text = yaml.safe_dump(o)
        problems += [
            f"{o['kind']}/{o['metadata']['name']} holds a secret value in clear"
            for v in values
            if v in text or base64.b64encode(v.encode()).decode() in text
        ]
    return problems
