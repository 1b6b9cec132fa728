"""deploy/helm/headhub, rendered offline by Helm's own engine and checked against the Kubernetes
API schemas of 1.29 (the chart's floor) and the newest bundled (see tests/deploy/chart.py), plus
what the schemas cannot say: probes, security contexts, PDB/HPA/Service wiring, the migration
hook's ordering, secrets by reference, every HEADHUB_* setting, commands the CLI accepts."""

from __future__ import annotations

import copy
import importlib
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import typer
import yaml

from tests.deploy.chart import (
    ADMIN_KEY,
    CHART,
    DATABASE_URL,
    KEY_PEPPER,
    KUBE_VERSIONS,
    NAMESPACE,
    REDIS_URL,
    REQUIRED,
    ROOT,
    S3,
    Rendered,
    copy_chart,
    env_of,
    full,
    inlined_secret_problems,
    merge,
    probe_problems,
    render,
    schema_problems,
    secret_values,
    security_problems,
    selects,
    wiring_problems,
)

# Value sets every structural test runs on: the default install, and the multi-node shape.
SHAPES = {
    "directory": REQUIRED,
    "s3": S3,
    "redis-no-autoscaling": merge(
        REQUIRED,
        {
            "secrets": {"redisUrl": REDIS_URL},
            "api": {"autoscaling": {"enabled": False}},
            "extractor": {"autoscaling": {"enabled": False}},
            "blobs": {"persistence": {"existingClaim": "nfs-blobs"}},
        },
    ),
    "external-extractor": merge(
        S3, {"extractor": {"enabled": False, "urls": ["http://ex-1:8001", "http://ex-2:8001"]}}
    ),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shape(request: pytest.FixtureRequest) -> tuple[str, Rendered]:
    return request.param, render(SHAPES[request.param])


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render(REQUIRED)


def container(r: Rendered, component: str) -> dict[str, Any]:
    (c,) = r.get("Deployment", full(component))["spec"]["template"]["spec"]["containers"]
    return c


def pod(r: Rendered, kind: str, component: str) -> dict[str, Any]:
    for o, spec in r.workloads():
        if o["kind"] == kind and o["metadata"]["name"] == full(component):
            return spec
    raise AssertionError(f"{kind} {component} not rendered")


# --- the chart is valid Kubernetes ------------------------------------------------------------


def test_the_chart_lints_clean() -> None:
    for version in KUBE_VERSIONS:
        report = helm.lint(CHART, REQUIRED, strict=True, kube_version=f"v{version}")
        bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not bad, bad


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(
    shape: tuple[str, Rendered], version: str
) -> None:
    _, r = shape
    assert {"Deployment", "Job", "CronJob", "ConfigMap", "Service"} <= {
        o["kind"] for o in r.objects
    }
    assert schema_problems(r.objects, version) == []


def test_the_default_install_has_every_object(default: Rendered) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in default.objects}
    assert names == {
        ("Deployment", full("api")),
        ("Deployment", full("extractor")),
        ("Deployment", full("worker")),
        ("Service", full("api")),
        ("Service", full("extractor")),
        ("HorizontalPodAutoscaler", full("api")),
        ("HorizontalPodAutoscaler", full("extractor")),
        ("PodDisruptionBudget", full("api")),
        ("PodDisruptionBudget", full("extractor")),
        ("PodDisruptionBudget", full("worker")),
        ("Job", full("migrate")),
        ("Secret", full("migrate")),  # the migration hook's copy of the database URL
        ("CronJob", full("gc")),
        ("Secret", full("secrets")),
        ("ConfigMap", full("config")),
        ("PersistentVolumeClaim", full("blobs")),
        ("ServiceAccount", "hh-headhub"),
    }


# --- what the schemas cannot say -------------------------------------------------------------


def test_api_and_extractor_probe_healthz_and_readyz(shape: tuple[str, Rendered]) -> None:
    name, r = shape
    if name == "external-extractor":
        assert not [d for d in r.of("Deployment") if d["metadata"]["name"] == full("extractor")]
        r = render(S3)
    assert probe_problems(r) == []


def test_the_worker_probes_healthz_and_readyz_on_its_health_port(
    shape: tuple[str, Rendered],
) -> None:
    _, r = shape
    assert probe_problems(r, ("worker",)) == []
    # The port probed is the one `headhub worker` serves on: HEADHUB_WORKER_HEALTH_PORT.
    c = container(r, "worker")
    (port,) = c["ports"]
    assert port["name"] == c["livenessProbe"]["httpGet"]["port"] == "health"
    assert env_of(c)["HEADHUB_WORKER_HEALTH_PORT"] == {
        "name": "HEADHUB_WORKER_HEALTH_PORT",
        "value": str(port["containerPort"]),
    }
    moved = render(merge(REQUIRED, {"worker": {"healthPort": 9100}}))
    c = container(moved, "worker")
    assert c["ports"][0]["containerPort"] == 9100
    assert env_of(c)["HEADHUB_WORKER_HEALTH_PORT"]["value"] == "9100"
    assert probe_problems(moved, ("worker",)) == []


def test_every_container_is_non_root_read_only_and_bounded(shape: tuple[str, Rendered]) -> None:
    _, r = shape
    assert security_problems(r) == []


def test_services_pdbs_and_hpas_reach_their_deployments(shape: tuple[str, Rendered]) -> None:
    _, r = shape
    assert wiring_problems(r) == []
    pdbs = {p["metadata"]["name"] for p in r.of("PodDisruptionBudget")}
    deployments = {d["metadata"]["name"] for d in r.of("Deployment")}
    assert pdbs == deployments  # every Deployment has a PDB
    for p in r.of("PodDisruptionBudget"):
        assert p["spec"]["maxUnavailable"] == 1  # never blocks a drain of a 1-replica component


def test_hpas_scale_api_and_extractor_on_cpu(default: Rendered) -> None:
    targets = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in default.of("HorizontalPodAutoscaler")
    }
    assert set(targets) == {full("api"), full("extractor")}
    for h in targets.values():
        assert 1 <= h["spec"]["minReplicas"] < h["spec"]["maxReplicas"]
        (metric,) = h["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
    # Without autoscaling the Deployments carry the replica counts instead.
    s3 = render(S3)
    assert not s3.of("HorizontalPodAutoscaler")
    assert s3.get("Deployment", full("api"))["spec"]["replicas"] == 3


def test_migration_runs_as_a_hook_before_anything_starts(default: Rendered) -> None:
    job = default.get("Job", full("migrate"))
    hooks = job["metadata"]["annotations"]
    assert set(hooks["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert (c["command"], c["args"]) == (["headhub"], ["migrate"])
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["activeDeadlineSeconds"] > 0
    # Pre-install hooks run before the release's own objects exist: the Job must not read the
    # release Secret or ServiceAccount, but a hook Secret that Helm creates first (lower weight).
    ref = env_of(c)["HEADHUB_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    hook_secret = default.get("Secret", ref["name"])
    secret_hooks = hook_secret["metadata"]["annotations"]
    assert secret_hooks["helm.sh/hook"] == hooks["helm.sh/hook"]
    assert int(secret_hooks["helm.sh/hook-weight"]) < int(hooks["helm.sh/hook-weight"])
    assert "hook-succeeded" in secret_hooks["helm.sh/hook-delete-policy"]
    assert secret_values(default)[f"{ref['name']}/{ref['key']}"] == DATABASE_URL
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]
    # Nothing else is a hook: Helm creates the Deployments only after the hooks succeeded.
    others = [
        o
        for o in default.objects
        if "helm.sh/hook" in o["metadata"].get("annotations", {})
        and o["metadata"]["name"] != full("migrate")
    ]
    assert others == []
    # With an existing Secret the Job reads it directly and no copy is made.
    s3 = render(S3)
    (c,) = s3.get("Job", full("migrate"))["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["HEADHUB_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "headhub-prod",
        "key": "database-url",
    }
    assert not s3.of("Secret")
    # An upgrade renders the same hook.
    assert render(REQUIRED, upgrade=True).get("Job", full("migrate"))["metadata"] == job["metadata"]


def test_secrets_are_referenced_never_inlined(shape: tuple[str, Rendered]) -> None:
    name, r = shape
    values = [DATABASE_URL, ADMIN_KEY, KEY_PEPPER, REDIS_URL, "db-password-123"]
    assert inlined_secret_problems(r, values) == []
    secret = SHAPES[name]["secrets"].get("existingSecret") or full("secrets")
    api = env_of(container(r, "api"))
    for var, key in (
        ("HEADHUB_DATABASE_URL", "database-url"),
        ("HEADHUB_ADMIN_KEY", "admin-key"),
        ("HEADHUB_KEY_PEPPER", "key-pepper"),
    ):
        assert api[var]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}, var
    assert env_of(container(r, "worker"))["HEADHUB_DATABASE_URL"]["valueFrom"]["secretKeyRef"][
        "name"
    ] == (secret)
    # Least privilege: only the API checks keys, the extractor touches no database.
    assert "HEADHUB_KEY_PEPPER" not in env_of(container(r, "worker"))
    assert "HEADHUB_ADMIN_KEY" not in env_of(container(r, "worker"))
    if name != "external-extractor":
        assert not [e for e in container(r, "extractor").get("env", []) if "valueFrom" in e]
    if name == "redis-no-autoscaling":
        assert secret_values(r)[f"{secret}/redis-url"] == REDIS_URL
    if "HEADHUB_REDIS_URL" in api:
        assert api["HEADHUB_REDIS_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_the_chart_made_secret_holds_exactly_the_values(default: Rendered) -> None:
    assert {k: v for k, v in secret_values(default).items() if "-secrets/" in k} == {
        f"{full('secrets')}/database-url": DATABASE_URL,
        f"{full('secrets')}/admin-key": ADMIN_KEY,
        f"{full('secrets')}/key-pepper": KEY_PEPPER,
    }
    # A new secret value rolls the pods (checksum annotation), a new ConfigMap too.
    other = render(merge(REQUIRED, {"secrets": {"adminKey": "b" * 40}}))
    a = default.get("Deployment", full("api"))["spec"]["template"]["metadata"]["annotations"]
    b = other.get("Deployment", full("api"))["spec"]["template"]["metadata"]["annotations"]
    assert a["checksum/secrets"] != b["checksum/secrets"]
    assert a["checksum/config"] == b["checksum/config"]


def _configmap_env(r: Rendered) -> dict[str, str]:
    return r.get("ConfigMap", full("config"))["data"]  # type: ignore[no-any-return]


# Settings the chart derives or takes from a Secret instead of `config`.
STRUCTURED = {
    "data_dir": "an emptyDir at /data",
    "database_url": "secrets",
    "admin_key": "secrets",
    "key_pepper": "secrets",
    "redis_url": "secrets",
    "extractor_urls": "the extractor Service",
    "blob_dir": "blobs.dir",
    "blob_url": "blobs.s3.url",
    "worker_health_port": "worker.healthPort",
}


def test_every_headhub_setting_comes_from_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import SecretStr

    from service.settings import Settings

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    config = values["config"]
    missing = []
    for field_name, field in Settings.model_fields.items():
        env = f"HEADHUB_{field_name.upper()}"
        if field_name in STRUCTURED:
            continue
        secret = SecretStr in getattr(field.annotation, "__args__", (field.annotation,))
        if secret and field_name.startswith("s3_"):
            continue  # S3 credentials: keys of blobs.s3.credentialsSecret, passed as envFrom
        if secret:
            missing.append(f"{env}: a secret; add it to `secrets` and to STRUCTURED here")
        elif env not in config:
            missing.append(f"{env}: add it to `config` in values.yaml")
    assert not missing, missing
    # values.yaml restates the service's defaults, so it changes nothing by being there.
    for key in list(config):
        monkeypatch.delenv(key, raising=False)
    defaults = Settings()
    rendered = _configmap_env(render(REQUIRED))
    for key in config:
        if rendered.get(key, "") != "":
            monkeypatch.setenv(key, rendered[key])
    from_chart = Settings()
    changed = {
        k: (getattr(defaults, k), getattr(from_chart, k))
        for k in Settings.model_fields
        if f"HEADHUB_{k.upper()}" in config and getattr(defaults, k) != getattr(from_chart, k)
    }
    assert not changed, f"values.yaml `config` differs from service/settings.py: {changed}"


def test_config_reaches_the_pods_that_read_it(default: Rendered) -> None:
    big = merge(
        REQUIRED,
        {"config": {"HEADHUB_MAX_BODY_BYTES": 134217728, "HEADHUB_JOB_LEASE_S": 45.5}},
    )
    data = _configmap_env(render(big))
    # Helm reads YAML numbers as floats: the chart must not print 1.34217728e+08.
    assert data["HEADHUB_MAX_BODY_BYTES"] == "134217728"
    assert data["HEADHUB_JOB_LEASE_S"] == "45.5"
    assert all(isinstance(v, str) for v in data.values())
    assert "HEADHUB_RATE_LIMIT_BURST" not in data  # "" = unset: the service's own default
    for kind, component in (
        ("Deployment", "api"),
        ("Deployment", "worker"),
        ("CronJob", "gc"),
    ):
        (c,) = pod(default, kind, component)["containers"]
        assert {"configMapRef": {"name": full("config")}} in c["envFrom"], component


def test_extractor_urls_point_at_the_extractor_service(shape: tuple[str, Rendered]) -> None:
    name, r = shape
    urls = _configmap_env(r)["HEADHUB_EXTRACTOR_URLS"].split(",")
    if name == "external-extractor":
        assert urls == ["http://ex-1:8001", "http://ex-2:8001"]
        return
    svc = r.get("Service", full("extractor"))
    (port,) = svc["spec"]["ports"]
    assert urls == [f"http://{full('extractor')}.{NAMESPACE}.svc:{port['port']}"]
    assert selects(
        svc["spec"]["selector"],
        r.get("Deployment", full("extractor"))["spec"]["template"]["metadata"]["labels"],
    )


def test_directory_blobs_are_one_rwx_volume_mounted_where_blob_dir_says(
    default: Rendered,
) -> None:
    pvc = default.get("PersistentVolumeClaim", full("blobs"))
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    blob_dir = _configmap_env(default)["HEADHUB_BLOB_DIR"]
    for kind, component in (("Deployment", "api"), ("Deployment", "worker"), ("CronJob", "gc")):
        spec = pod(default, kind, component)
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        (c,) = spec["containers"]
        mounted = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert claims.get(mounted.get(blob_dir)) == full("blobs"), component
    assert "volumes" not in pod(default, "Deployment", "extractor") or not [
        v
        for v in pod(default, "Deployment", "extractor")["volumes"]
        if "persistentVolumeClaim" in v
    ]
    existing = render(SHAPES["redis-no-autoscaling"])
    assert not existing.of("PersistentVolumeClaim")
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod(existing, "Deployment", "api")["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["nfs-blobs"]


def test_s3_blobs_use_the_url_and_credentials_and_no_volume() -> None:
    r = render(S3)
    data = _configmap_env(r)
    assert data["HEADHUB_BLOB_URL"] == "s3://headhub-blobs/prod"
    assert "HEADHUB_BLOB_DIR" not in data
    assert not r.of("PersistentVolumeClaim")
    for kind, component in (("Deployment", "api"), ("Deployment", "worker"), ("CronJob", "gc")):
        spec = pod(r, kind, component)
        assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v], component
        (c,) = spec["containers"]
        assert {"secretRef": {"name": "headhub-s3"}} in c["envFrom"], component
    # S3 settings other than the URL (endpoint, region, ...) are ordinary `config` entries.
    endpoint = merge(S3, {"config": {"HEADHUB_S3_ENDPOINT_URL": "http://minio.store:9000"}})
    assert _configmap_env(render(endpoint))["HEADHUB_S3_ENDPOINT_URL"] == "http://minio.store:9000"


def _headhub_app() -> typer.Typer:
    """The Typer app behind the `headhub` console script, wherever pyproject.toml says it is."""
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["headhub"]
    module = importlib.import_module(script.split(":")[0])
    return module.app  # type: ignore[no-any-return]


def _cli_accepts(args: list[str]) -> None:
    """Parse `headhub ARGS` with the real CLI (options, types, ranges); run nothing.

    Duck-typed: typer >= 0.2x ships its own copy of click, so no click classes are named."""
    cmd: Any = typer.main.get_command(_headhub_app())
    ctx = cmd.context_class(cmd, info_name="headhub")
    rest = list(args)
    while hasattr(cmd, "list_commands"):  # a group: descend into the named subcommand
        assert rest and rest[0] in cmd.list_commands(ctx), f"no command {rest[:1]} in {args}"
        cmd, rest = cmd.get_command(ctx, rest[0]), rest[1:]
        ctx = cmd.context_class(cmd, info_name=cmd.name, parent=ctx)
    cmd.make_context(cmd.name, rest, parent=ctx.parent)


def test_every_container_runs_a_command_the_cli_accepts(default: Rendered) -> None:
    seen = set()
    for o, spec in default.workloads():
        for c in spec["containers"]:
            assert c["command"] == ["headhub"], o["metadata"]["name"]
            _cli_accepts([str(a) for a in c["args"]])
            seen.add(" ".join(c["args"][:2]))
    assert seen == {
        "api --host",
        "extractor serve",
        "worker --concurrency",
        "migrate",
        "gc --grace-minutes",
    }


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["worker", "--concurrency", "0"], "BadParameter"),  # min=1
        (["api", "--port", "http"], "BadParameter"),
        (["extractor", "serve", "--no-such-flag"], "NoSuchOption"),
        (["api", "surplus"], "UsageError"),
        (["workers"], "AssertionError"),
    ],
)
def test_the_cli_check_rejects_what_the_cli_rejects(args: list[str], error: str) -> None:
    with pytest.raises(Exception) as caught:
        _cli_accepts(args)
    assert caught.typename == error


def test_shutdown_fits_in_the_termination_grace(default: Rendered) -> None:
    config = _configmap_env(default)
    api = pod(default, "Deployment", "api")
    sleep = int(api["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    assert api["terminationGracePeriodSeconds"] > sleep + float(
        config["HEADHUB_SHUTDOWN_TIMEOUT_S"]
    )
    worker = pod(default, "Deployment", "worker")
    assert worker["terminationGracePeriodSeconds"] > float(config["HEADHUB_WORKER_GRACE_S"])


def test_extractor_threads_match_its_cpu_limit(default: Rendered) -> None:
    c = container(default, "extractor")
    threads = c["args"][c["args"].index("--threads") + 1]
    assert threads == str(c["resources"]["limits"]["cpu"])


def test_gc_runs_one_at_a_time(default: Rendered) -> None:
    cron = default.get("CronJob", full("gc"))
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["schedule"] == "17 * * * *"


# --- the chart refuses what cannot work --------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"secrets": {"databaseUrl": ""}}, "secrets.databaseUrl is required"),
        ({"secrets": {"adminKey": ""}}, "secrets.adminKey is required"),
        ({"secrets": {"keyPepper": ""}}, "secrets.keyPepper is required"),
        ({"secrets": {"adminKey": "short"}}, "at least 32 characters"),
        ({"secrets": {"databaseUrl": "sqlite:////data/h.db"}}, "SQLite"),
        ({"blobs": {"persistence": {"enabled": False}}}, "ReadWriteMany"),
        ({"blobs": {"backend": "s3"}}, "blobs.s3.url"),
        ({"blobs": {"backend": "s3", "s3": {"url": "https://bucket"}}}, "s3://bucket/prefix"),
        # values.schema.json: Helm checks the values before any template runs.
        ({"blobs": {"backend": "nfs"}}, "'/blobs/backend': value must be one of"),
        ({"secret": {"adminKey": ADMIN_KEY}}, "additional properties 'secret' not allowed"),
        ({"api": {"replicas": "two"}}, "'/api/replicas': got string, want integer"),
        ({"worker": {"concurrency": 0}}, "'/worker/concurrency': minimum"),
        ({"extractor": {"urls": ["ex-1:8001"]}}, "'/extractor/urls/0'"),
        ({"config": {"HEADHUB_DATABASE_URL": DATABASE_URL}}, "secrets.databaseUrl"),
        ({"config": {"HEADHUB_KEY_PEPPER": "x"}}, "secrets.keyPepper"),
        ({"config": {"HEADHUB_EXTRACTOR_URLS": "http://x"}}, "extractor.urls"),
        ({"config": {"HEADHUB_WORKER_HEALTH_PORT": "0"}}, "worker.healthPort"),
        ({"worker": {"healthPort": 0}}, "'/worker/healthPort': minimum"),
        ({"config": {"LOG_LEVEL": "x"}}, "only HEADHUB_"),
        ({"extractor": {"enabled": False}}, "extractor.urls"),
    ],
)
def test_the_chart_refuses_an_install_that_cannot_work(over: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(merge(REQUIRED, over))


def test_an_existing_secret_needs_no_secret_values() -> None:
    r = render(merge(S3, {"secrets": {"databaseUrl": "", "adminKey": "", "keyPepper": ""}}))
    assert r.of("Deployment")


# --- the checks catch a broken chart ---------------------------------------------------------


def _break(tmp_path: Path, template: str, old: str, new: str) -> Path:
    chart = copy_chart(tmp_path)
    path = chart / "templates" / template
    text = path.read_text()
    assert old in text, f"{old!r} not in {template}"
    path.write_text(text.replace(old, new, 1))
    return chart


def test_a_missing_readiness_probe_is_caught(tmp_path: Path) -> None:
    probe = (
        "          readinessProbe:\n"
        '            {{- include "headhub.httpProbe" (list "/readyz" .Values.api.readinessProbe)'
        " | nindent 12 }}\n"
    )
    chart = _break(tmp_path, "api-deployment.yaml", probe, "")
    r = render(REQUIRED, chart)
    assert schema_problems(r.objects, KUBE_VERSIONS[0]) == []  # still valid Kubernetes...
    assert probe_problems(r) == ["api: no readinessProbe httpGet"]  # ...but not what we need


def test_a_wrong_field_type_fails_the_schema(tmp_path: Path) -> None:
    chart = _break(
        tmp_path,
        "api-deployment.yaml",
        "containerPort: {{ .Values.api.port }}",
        "containerPort: {{ .Values.api.port | quote }}",
    )
    problems = schema_problems(render(REQUIRED, chart).objects, KUBE_VERSIONS[0])
    assert problems == [
        f"Deployment/{full('api')} at spec/template/spec/containers/0/ports/0/containerPort: "
        "'8000' is not of type 'integer'"
    ]


def test_a_misspelled_field_fails_the_strict_schema(tmp_path: Path) -> None:
    chart = _break(
        tmp_path, "_helpers.tpl", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"
    )
    r = render(REQUIRED, chart)
    for version in KUBE_VERSIONS:
        problems = schema_problems(r.objects, version)
        assert problems and all("readOnlyRootFileSystem" in p for p in problems)
        assert len(problems) == 5  # api, extractor, worker, migrate, gc
    assert security_problems(r)


def test_a_pdb_that_selects_nothing_is_caught(default: Rendered) -> None:
    broken = Rendered(copy.deepcopy(default.objects))
    pdb = broken.get("PodDisruptionBudget", full("worker"))
    pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "workers"
    assert wiring_problems(broken) == [f"PodDisruptionBudget/{full('worker')} selects []"]


def test_an_inlined_secret_is_caught(default: Rendered) -> None:
    broken = Rendered(copy.deepcopy(default.objects))
    c = broken.get("Deployment", full("worker"))["spec"]["template"]["spec"]["containers"][0]
    c["env"][0] = {"name": "HEADHUB_DATABASE_URL", "value": DATABASE_URL}
    assert inlined_secret_problems(broken, [DATABASE_URL]) == [
        f"Deployment/{full('worker')} holds a secret value in clear"
    ]


def test_a_writable_root_is_caught(default: Rendered) -> None:
    broken = Rendered(copy.deepcopy(default.objects))
    c = broken.get("Job", full("migrate"))["spec"]["template"]["spec"]["containers"][0]
    c["securityContext"]["readOnlyRootFilesystem"] = False
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/tmp"]
    assert security_problems(broken) == [
        f"Job/{full('migrate')}/migrate: root filesystem not read-only",
        f"Job/{full('migrate')}/migrate: /tmp is not a writable emptyDir",
    ]


# --- the README's install line works ---------------------------------------------------------


def _readme_install() -> tuple[list[str], str]:
    """(the --set arguments of the README's `helm install`, its whole shell block)."""
    section = (ROOT / "README.md").read_text().split("## Kubernetes", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    (install,) = [ln for ln in joined.splitlines() if ln.strip().startswith("helm install")]
    words = install.split("#", 1)[0].split()
    assert words[:2] == ["helm", "install"] and words[3] == "deploy/helm/headhub"
    return [words[i + 1] for i, w in enumerate(words) if w == "--set"], block


def test_the_readme_helm_install_renders() -> None:
    sets, block = _readme_install()
    values: dict[str, Any] = {}
    for s in sets:
        values = merge(values, helm.parse_set_string(s))  # Helm's own --set parser
    r = render(values)
    assert schema_problems(r.objects, KUBE_VERSIONS[0]) == []
    secret = values["secrets"]["existingSecret"]
    for key in ("database-url", "admin-key", "key-pepper"):
        assert f"--from-literal={key}=" in block  # the Secret the README makes has every key
        ref = {"name": secret, "key": key}
        assert any(
            e.get("valueFrom", {}).get("secretKeyRef") == ref for e in container(r, "api")["env"]
        ), key
    without = [s for s in sets if not s.startswith("secrets.")]
    with pytest.raises(helm.HelmError, match=r"secrets\.databaseUrl is required"):
        render(merge({}, helm.parse_set_string(",".join(without))))
