"""The deployment files keep the invariants: k8s/ (each overlay, rendered with
``kubectl kustomize k8s/overlays/<name>``: every k8s check runs once per overlay),
docker-compose.yml and the Dockerfile. The overlays' own structure (schemas, custom
resources, network policies, disruption budgets, KEDA) is checked in test_k8s_overlays.py.

What is checked, in both k8s/ and compose where it applies:
- exactly one celery beat (k8s: replicas 1, strategy Recreate; compose: a fixed
  container name, so it cannot be scaled);
- the ledger's Redis runs with appendonly yes, appendfsync always, noeviction, on a volume
  (docs/design.md, "Invariants", 6);
- PLATFORM_INTERNAL_SECRET reaches only the report workers, only from the Secret
  traefik-metrics-scraper-secrets key platform-internal-secret, never as a literal or on
  a command line (invariant 7; compose: a dev default, sent only to the dev platform);
- RBAC is one Role in ``traefik`` with exactly pods get/list/watch and pods/log get;
- the scraper containers keep the original's resources, run as non-root on a read-only
  root filesystem with no capabilities;
- Flower runs only with basic auth, from the environment, with no default password;
- every environment variable name is a field of app.settings.Settings (upper-cased) or
  is listed in OTHER_READERS with what reads it, and the values load as valid settings;
- compose without a cluster: the file source's worker, beat's plans and the queues they
  use agree with the code, Traefik's configuration (deploy/traefik/, the files
  tests/e2e/test_file_source.py runs) writes the access log where LOG_FILES reads it,
  the Kubernetes mode is a profile, and .env.example holds every variable, no secret.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "k8s"
OVERLAYS = ("dev", "prod")  # k8s/overlays/<name>
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

NAMESPACE = "traefik-metrics-scraper"
TRAEFIK_NAMESPACE = "traefik"
SERVICE_ACCOUNT = "traefik-metrics-scraper"
SECRET_NAME = "traefik-metrics-scraper-secrets"
SECRET_KEY = "platform-internal-secret"
SECRET_VAR = "PLATFORM_INTERNAL_SECRET"
IMAGE = "ghcr.io/ethanke/traefik-metrics-scraper"

# The original service's resources, per scraper container.
ORIGINAL_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "100m", "memory": "128Mi"}}
# Each scraper container's resources: the original's, except where issue 10's benchmarks
# measured more (the manifests' comments give the figures; bench/fetch_memory.py,
# bench/delivery.py): the fetch worker (one process, one thread) at 94-97 MiB of PSS after
# its first read and 108-109 MiB at most at full delivery scale; the report worker uses
# 0.25-0.31 core at 167 reports/s.
RESOURCES = {
    "worker-fetch": {"requests": {"cpu": "100m", "memory": "112Mi"}, "limits": {"cpu": "1", "memory": "160Mi"}},
    "worker-report": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}},
    "beat": ORIGINAL_RESOURCES,
    "watcher": ORIGINAL_RESOURCES,
}
SCRAPER_WORKLOADS = ("worker-fetch", "worker-report", "beat", "watcher")

SETTINGS_VARS = {name.upper() for name in Settings.model_fields}
# Variables the deployment sets that app.settings.Settings does not read as fields.
OTHER_READERS = {
    "POD_NAMESPACE": "app.settings: the default of SCRAPER_ID",
    "KUBECONFIG": "the kubernetes client, outside a cluster (compose)",
    "FLOWER_BASIC_AUTH": "Flower (FLOWER_* variables are its options)",
    "FLOWER_MAX_TASKS": "Flower",
    "REDIS_PASSWORD": "the kubelet, expanding $(REDIS_PASSWORD) in REDIS_URL (from the Secret traefik-metrics-scraper-redis)",
    "REDISCLI_AUTH": "redis-cli (the Redis readiness probe)",
}
REDIS_FLAGS = {"--appendonly": "yes", "--appendfsync": "always", "--maxmemory-policy": "noeviction"}
FLOWER_GUARD = 'test -n "$FLOWER_BASIC_AUTH"'


# ----- helpers --------------------------------------------------------------------------


def _flags(args: list[str]) -> dict[str, str]:
    """``redis-server --a x --b y`` (or ``--a=x``) as {"--a": "x", "--b": "y"}."""
    out: dict[str, str] = {}
    items = [str(a) for a in args]
    for i, item in enumerate(items):
        if not item.startswith("--"):
            continue
        if "=" in item:
            name, value = item.split("=", 1)
            out[name] = value
        elif i + 1 < len(items) and not items[i + 1].startswith("--"):
            out[item] = items[i + 1]
    return out


def _cpu_millis(value: object) -> float:
    text = str(value)
    return float(text[:-1]) if text.endswith("m") else float(text) * 1000


_MEMORY_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "M": 10**6, "G": 10**9}


def _memory_bytes(value: object) -> float:
    text = str(value)
    for unit, factor in _MEMORY_UNITS.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def _normalized(resources: dict) -> dict:
    return {
        kind: {"cpu": _cpu_millis(values["cpu"]), "memory": _memory_bytes(values["memory"])}
        for kind, values in resources.items()
    }


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Load the settings as a process with exactly ``env`` would (plus nothing else)."""
    for name in [*SETTINGS_VARS, *OTHER_READERS]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


# ----- Kubernetes: render once ----------------------------------------------------------


def render(overlay: str) -> list[dict]:
    """``kubectl kustomize k8s/overlays/<overlay>``, as documents."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing = "kubectl is not installed: cannot render k8s/ with `kubectl kustomize`"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}, and CI must check the manifests")
        pytest.skip(missing)
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / "overlays" / overlay)], capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay} failed:\n{out.stderr}"
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert rendered, f"kubectl kustomize k8s/overlays/{overlay} rendered nothing"
    return rendered


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def docs(overlay) -> list[dict]:
    return render(overlay)


def _of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _workloads(docs: list[dict]) -> list[dict]:
    kinds = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
    return [d for d in docs if d["kind"] in kinds]


def _pod_spec(workload: dict) -> dict:
    if workload["kind"] == "Pod":
        return workload["spec"]
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def _containers(workload: dict) -> list[dict]:
    spec = _pod_spec(workload)
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _argv(container: dict) -> list[str]:
    return [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]


def _configmap_data(docs: list[dict], name: str) -> dict[str, str]:
    cm = _one(docs, "ConfigMap", name)
    return dict(cm.get("data") or {})


def _env_names(docs: list[dict], container: dict) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(_configmap_data(docs, source["configMapRef"]["name"]))
    return names


def _is_beat(argv: list[str]) -> bool:
    return "celery" in " ".join(argv) and "beat" in argv


def _scraper_workload(docs: list[dict], name: str) -> dict:
    return _one(docs, "Deployment", name)


# ----- Kubernetes: invariants -----------------------------------------------------------


def test_k8s_exactly_one_beat_with_recreate(docs):
    beats = [w for w in _workloads(docs) if any(_is_beat(_argv(c)) for c in _containers(w))]
    assert [(w["kind"], w["metadata"]["name"]) for w in beats] == [("Deployment", "beat")]
    beat = beats[0]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert sum(_is_beat(_argv(c)) for c in _containers(beat)) == 1
    scaled = [h for h in _of_kind(docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == "beat"]
    assert not scaled, "beat must never be autoscaled"


def test_k8s_redis_is_durable_and_never_evicts(docs):
    redis = _one(docs, "StatefulSet", "redis")
    assert redis["spec"]["replicas"] == 1
    (container,) = [c for c in _containers(redis) if c["name"] == "redis"]
    flags = _flags(_argv(container))
    for flag, value in REDIS_FLAGS.items():
        assert flags.get(flag) == value, f"redis must run with {flag} {value}, got {flags.get(flag)!r}"
    claims = {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_dir = flags.get("--dir", "/data")
    assert any(mounts.get(claim) == data_dir for claim in claims), "the AOF directory must be on the PVC"
    # A password, from its Secret: in the args only as $(REDIS_PASSWORD), which the kubelet expands.
    assert flags.get("--requirepass") == "$(REDIS_PASSWORD)"
    redis_secret = {"secretKeyRef": {"name": "traefik-metrics-scraper-redis", "key": "password"}}
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"] == env["REDISCLI_AUTH"]["valueFrom"] == redis_secret
    # Every scraper container reaches it with the password, and no ConfigMap holds a URL.
    for workload in _workloads(docs):
        for c in _containers(workload):
            if not c["image"].startswith(IMAGE):
                continue
            names = [e["name"] for e in c.get("env", [])]
            env = {e["name"]: e for e in c.get("env", [])}
            where = workload["metadata"]["name"]
            assert env["REDIS_PASSWORD"]["valueFrom"] == redis_secret, where
            assert env["REDIS_URL"] == {"name": "REDIS_URL", "value": "redis://:$(REDIS_PASSWORD)@redis:6379/0"}, where
            assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL"), f"{where}: $(VAR) needs VAR first"
    for cm in _of_kind(docs, "ConfigMap"):
        assert "REDIS_URL" not in (cm.get("data") or {})


def _config_name(docs: list[dict]) -> str:
    names = [d["metadata"]["name"] for d in _of_kind(docs, "ConfigMap")]
    (name,) = [n for n in names if n.startswith("traefik-metrics-scraper-config")]
    return name


def test_k8s_platform_secret_only_from_the_secret(docs):
    holders = []
    for workload in _workloads(docs):
        for container in _containers(workload):
            for entry in container.get("env", []):
                if entry["name"] != SECRET_VAR:
                    continue
                assert "value" not in entry, f"{workload['metadata']['name']}: {SECRET_VAR} is a literal"
                assert entry.get("valueFrom") == {"secretKeyRef": {"name": SECRET_NAME, "key": SECRET_KEY}}
                holders.append(workload["metadata"]["name"])
            for source in container.get("envFrom", []):
                # A whole Secret or ConfigMap imported as variables could carry the name unseen.
                assert "secretRef" not in source
                if "configMapRef" in source:
                    assert SECRET_VAR not in _configmap_data(docs, source["configMapRef"]["name"])
            assert not any(SECRET_VAR in a or SECRET_KEY in a for a in _argv(container))
    # Only the processes that send reports hold it: not Flower, beat or the fetch side.
    assert holders == ["worker-report"]
    for cm in _of_kind(docs, "ConfigMap"):
        assert SECRET_VAR not in (cm.get("data") or {})
    assert not _of_kind(docs, "Secret"), "no Secret is committed: it is created with kubectl (k8s/README.md)"


def test_k8s_rbac_is_one_role_in_traefik(docs):
    assert not _of_kind(docs, "ClusterRole") and not _of_kind(docs, "ClusterRoleBinding")
    (role,) = _of_kind(docs, "Role")
    assert role["metadata"]["namespace"] == TRAEFIK_NAMESPACE
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        assert not rule.get("resourceNames")
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    assert granted == {"pods": {"get", "list", "watch"}, "pods/log": {"get"}}

    (binding,) = _of_kind(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == TRAEFIK_NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]
    sa = _one(docs, "ServiceAccount", SERVICE_ACCOUNT)
    assert sa["metadata"]["namespace"] == NAMESPACE

    # Only the fetch workers (plan, fetch, sweep) and the pod watcher carry the ServiceAccount's token.
    def mounts_token(pod: dict) -> bool:
        default = sa.get("automountServiceAccountToken", True) if pod.get("serviceAccountName") == SERVICE_ACCOUNT else True
        return pod.get("automountServiceAccountToken", default)

    with_token = [w["metadata"]["name"] for w in _workloads(docs) if mounts_token(_pod_spec(w))]
    assert sorted(with_token) == ["watcher", "worker-fetch"]
    for name in with_token:
        assert _pod_spec(_scraper_workload(docs, name))["serviceAccountName"] == SERVICE_ACCOUNT


def test_k8s_namespace_and_images(docs):
    _one(docs, "Namespace", NAMESPACE)
    for doc in docs:
        if doc["kind"] in ("Namespace",):
            continue
        expected = TRAEFIK_NAMESPACE if doc["kind"] in ("Role", "RoleBinding") else NAMESPACE
        assert doc["metadata"].get("namespace") == expected, f"{doc['kind']}/{doc['metadata']['name']}"
    for name in (*SCRAPER_WORKLOADS, "flower", "metrics"):
        for container in _containers(_scraper_workload(docs, name)):
            assert container["image"].startswith(IMAGE), container["image"]


def test_k8s_scraper_workloads(docs, overlay):
    queues = {"worker-fetch": "fetch", "worker-report": "report"}
    # dev: one of each; prod: two fetch workers, report workers scaled by KEDA (no replicas).
    replicas = {"dev": {"worker-fetch": 1, "worker-report": 1}, "prod": {"worker-fetch": 2, "worker-report": None}}
    for name, queue in queues.items():
        workload = _scraper_workload(docs, name)
        assert workload["spec"].get("replicas") == replicas[overlay][name], name
        (container,) = _containers(workload)
        argv = _argv(container)
        # --quiet: Celery prints its banner (not a log record), which would break JSON logs.
        assert argv[:5] == ["celery", "-A", "app", "--quiet", "worker"]
        assert argv[argv.index("-Q") + 1] == queue
        # Both on threads: the fetch worker one thread in one process (bench/fetch_memory.py;
        # the read enforces FETCH_TIME_LIMIT itself), the report worker many.
        assert _flags(argv)["--pool"] == "threads", name
    assert _flags(_argv(_containers(_scraper_workload(docs, "worker-fetch"))[0]))["--concurrency"] == "1"
    for name in SCRAPER_WORKLOADS:
        (container,) = _containers(_scraper_workload(docs, name))
        resources = _normalized(container["resources"])
        assert resources == _normalized(RESOURCES[name]), name
        for kind in ("cpu", "memory"):
            assert resources["requests"][kind] <= resources["limits"][kind], (name, kind)
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_k8s_watcher(docs):
    """The pod watcher: `traefik-metrics-scraper watch`, one or two replicas (one leads
    through a Redis lease), the fetch workers' settings, liveness on the deadline file it
    keeps (app/watch.py, app/health.py's format and probe command)."""
    from app import health, watch

    watcher = _scraper_workload(docs, "watcher")
    assert watcher["spec"]["replicas"] in (1, 2)
    (container,) = _containers(watcher)
    assert _argv(container) == ["traefik-metrics-scraper", "watch"]
    assert container["livenessProbe"]["exec"]["command"] == [
        "sh", "-c", health.probe_command("/tmp/health", watch.LIVE_FILE)]
    assert container["startupProbe"]["exec"]["command"] == ["sh", "-c", f"test -s /tmp/health/{watch.LIVE_FILE}"]
    (fetch,) = _containers(_scraper_workload(docs, "worker-fetch"))
    assert container["envFrom"] == fetch["envFrom"] and container["env"] == fetch["env"]
    assert _pod_spec(watcher)["automountServiceAccountToken"] is True


def test_k8s_security_context(docs):
    for workload in _workloads(docs):
        pod = _pod_spec(workload)
        pod_sc = pod.get("securityContext", {})
        tmp_volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in _containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where
            if container["image"].startswith(IMAGE):
                # A writable /tmp (beat's schedule file, Python's tempfile) on a read-only root.
                assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in container["volumeMounts"]), where


def test_k8s_flower_has_basic_auth(docs):
    flower = _scraper_workload(docs, "flower")
    (container,) = _containers(flower)
    argv = _argv(container)
    script = " ".join(argv)
    assert "celery -A app flower" in script
    assert FLOWER_GUARD in script, "Flower must refuse to start without FLOWER_BASIC_AUTH"
    assert not any(a.startswith("--basic-auth=") and "$" not in a for a in argv), "no password on the command line"
    env = {e["name"]: e for e in container["env"]}
    auth = env["FLOWER_BASIC_AUTH"]
    assert "value" not in auth
    # Its own Secret (not optional: without it the pod does not start), not the platform's.
    assert auth["valueFrom"] == {"secretKeyRef": {"name": "traefik-metrics-scraper-flower", "key": "basic-auth"}}
    service = _one(docs, "Service", "flower")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_k8s_env_names_are_settings_fields(docs):
    for workload in _workloads(docs):
        for container in _containers(workload):
            if not container["image"].startswith(IMAGE):
                continue
            unknown = _env_names(docs, container) - SETTINGS_VARS - set(OTHER_READERS)
            assert not unknown, f"{workload['metadata']['name']}: not a Settings field (typo?): {sorted(unknown)}"


def test_k8s_config_loads_as_settings(docs, overlay, monkeypatch):
    data = _configmap_data(docs, _config_name(docs))
    s = _settings_from({**data, SECRET_VAR: "placeholder", "POD_NAMESPACE": NAMESPACE}, monkeypatch)
    assert s.platform_api_url == "http://platform.platform.svc.cluster.local:3000"
    assert s.report_interval == 60
    assert s.traefik_namespace == TRAEFIK_NAMESPACE
    # dev: DEBUG, its own SCRAPER_ID (keys never collide with production's); prod: JSON logs.
    expected = {"dev": ("DEBUG", "human", "dev"), "prod": ("INFO", "json", NAMESPACE)}[overlay]
    assert (s.log_level, s.log_format, s.scraper_id) == expected


def test_other_readers_are_read():
    """The names in OTHER_READERS are real: a typo there would hide one in the files."""
    assert not set(OTHER_READERS) & SETTINGS_VARS
    assert "POD_NAMESPACE" in (ROOT / "app" / "settings.py").read_text()
    flower_options = pytest.importorskip("flower.options").options
    for name in OTHER_READERS:
        if name.startswith("FLOWER_"):
            assert name.removeprefix("FLOWER_").lower() in flower_options, name


def test_pod_namespace_names_the_scraper(monkeypatch):
    assert _settings_from({"POD_NAMESPACE": "ns-from-downward-api"}, monkeypatch).scraper_id == "ns-from-downward-api"


# ----- docker-compose.yml ---------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def _environment(service: dict) -> dict[str, str]:
    """A service's environment with no variable set where compose runs: a name without a
    value is taken from there, so it is left out (compose-spec: "environment")."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env if "=" in item)
    return {k: str(v) for k, v in env.items() if v is not None}


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?message} / ${VAR} with no variable set."""

    def one(m: re.Match[str]) -> str:
        op = m.group("op") or ""
        if op.endswith("-"):
            return m.group("arg")
        if op.endswith("?"):
            return "set-by-operator"
        return ""

    return _INTERPOLATION.sub(one, value).replace("$$", "$")


def _scraper_services(compose: dict) -> dict[str, dict]:
    """The services built from this repository's Dockerfile (the scraper images and the
    dev platform), as opposed to third-party images such as redis."""
    return {
        name: s
        for name, s in compose["services"].items()
        if str(s.get("image", "")).startswith(IMAGE) or "build" in s
    }


def _celery_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in _scraper_services(compose).items() if "celery" in " ".join(_command(s))}


def _queues(service: dict) -> list[str]:
    """The queues a ``celery ... worker -Q a,b`` command consumes."""
    cmd = _command(service)
    return cmd[cmd.index("-Q") + 1].split(",")


def test_compose_services(compose):
    assert {"redis", "platform", "worker-fetch", "worker-report", "beat", "flower", "metrics", "traefik", "whoami",
            "loadgen", "worker-fetch-kubernetes", "watcher"} <= set(compose["services"])
    services = compose["services"]
    for name in ("worker-fetch", "worker-fetch-kubernetes", "worker-report"):
        assert _command(services[name])[:4] == ["celery", "-A", "app", "worker"], name
    assert _queues(services["worker-fetch"]) == ["fetch.files"]
    assert _queues(services["worker-fetch-kubernetes"]) == ["fetch"]
    pod_logs = _flags(_command(services["worker-fetch-kubernetes"]))
    assert (pod_logs["--pool"], pod_logs["--concurrency"]) == ("threads", "1")  # as in k8s/base/worker-fetch.yaml
    report = services["worker-report"]
    assert _queues(report) == ["report"]
    # Scalable: nothing in it that two copies could not share.
    assert "container_name" not in report and not report.get("ports")
    assert _command(services["watcher"])[:2] == ["traefik-metrics-scraper", "watch"]
    assert services["watcher"]["volumes"] == services["worker-fetch-kubernetes"]["volumes"]
    assert _environment(services["watcher"]) == _environment(services["worker-fetch-kubernetes"])
    assert _command(services["metrics"])[:2] == ["traefik-metrics-scraper", "metrics"]
    assert all(str(p).startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    assert _command(services["platform"])[:3] == ["python", "-m", "sim.platform_stub"]
    assert "--secret" not in _command(services["platform"]), "the stub takes its secret from the environment"
    # The stub comes from its own development-only target, under a local image name (never
    # the scraper's, which holds no simulator code, and never pushed to the registry).
    assert services["platform"]["build"]["target"] == "dev-platform"
    assert not str(services["platform"]["image"]).startswith(("ghcr.io/", IMAGE))
    for name, service in _scraper_services(compose).items():
        if name != "platform":
            assert service["build"]["target"] in ("scraper", "flower"), name
    # The kubeconfig: the host's, read-only, for the processes that call the Kubernetes API
    # (the kubernetes profile), and no other.
    volumes = services["worker-fetch-kubernetes"]["volumes"]
    assert any(v.startswith("${KUBECONFIG:-~/.kube/config}:") and v.endswith(":ro") for v in volumes)
    with_kubeconfig = {n for n, s in services.items() if any("KUBECONFIG" in str(v) for v in s.get("volumes", []))}
    assert with_kubeconfig == {"worker-fetch-kubernetes", "watcher"}
    for name, service in _scraper_services(compose).items():
        assert service.get("read_only") is True, name
        assert "ALL" in service.get("cap_drop", []), name


def test_compose_exactly_one_beat(compose):
    beats = [name for name, s in compose["services"].items() if _is_beat(_command(s))]
    assert beats == ["beat"]
    beat = compose["services"]["beat"]
    # A fixed container name: `docker-compose up --scale beat=2` fails instead of running two.
    assert beat.get("container_name")
    assert beat.get("deploy", {}).get("replicas", 1) == 1 and beat.get("scale", 1) == 1


def test_compose_redis_is_durable_and_never_evicts(compose):
    redis = compose["services"]["redis"]
    assert str(redis["image"]).startswith("redis:7")
    flags = _flags(_command(redis))
    for flag, value in REDIS_FLAGS.items():
        assert flags.get(flag) == value, f"redis must run with {flag} {value}"
    (volume,) = [v for v in redis["volumes"] if v.endswith(":/data")]
    assert volume.split(":")[0] in (compose.get("volumes") or {}), "a named volume keeps the AOF"


def test_compose_flower_basic_auth_without_default(compose):
    flower = compose["services"]["flower"]
    env = _environment(flower)
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", env["FLOWER_BASIC_AUTH"]), (
        "FLOWER_BASIC_AUTH must be required (${FLOWER_BASIC_AUTH:?...}), with no default password"
    )
    script = " ".join(_command(flower)).replace("$$", "$")
    assert "celery -A app flower" in script
    assert FLOWER_GUARD in script
    assert "--basic-auth" not in script or "${FLOWER_BASIC_AUTH" in script
    assert all(str(p).startswith("127.0.0.1:") for p in flower.get("ports", [])), "Flower only on localhost"
    assert SECRET_VAR not in env


def test_compose_platform_secret(compose):
    holders = {name for name, s in compose["services"].items() if SECRET_VAR in _environment(s)}
    assert holders == {"platform", "worker-report"}
    for name in holders:
        # From the environment; the dev default is there only for the dev platform...
        assert _environment(compose["services"][name])[SECRET_VAR] == "${PLATFORM_INTERNAL_SECRET:-dev-secret}"
    # ...because the report worker sends reports to the dev platform and nowhere else.
    assert _environment(compose["services"]["worker-report"])["PLATFORM_API_URL"] == "http://platform:3000"
    for name, service in compose["services"].items():
        assert not any(SECRET_VAR in a for a in _command(service)), name
    text = COMPOSE_FILE.read_text()
    assert text.count("dev-secret") == 2, "the dev default appears only for the platform and the report worker"


def test_compose_env_names_are_settings_fields(compose):
    for name, service in _scraper_services(compose).items():
        unknown = set(_environment(service)) - SETTINGS_VARS - set(OTHER_READERS)
        assert not unknown, f"{name}: not a Settings field (typo?): {sorted(unknown)}"


def test_compose_env_loads_as_settings(compose, monkeypatch):
    assert set(_celery_services(compose)) == {"worker-fetch", "worker-fetch-kubernetes", "worker-report", "beat", "flower"}
    for name, service in _celery_services(compose).items():
        env = {k: _interpolate(v) for k, v in _environment(service).items() if k in SETTINGS_VARS}
        s = _settings_from(env, monkeypatch)
        assert s.redis_url == "redis://redis:6379/0", name
        assert s.report_interval == 60 and s.log_level == "INFO", name


def test_compose_build_targets_are_dockerfile_stages(compose):
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), re.M | re.I))
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["build"].get("target") in stages, f"{name}: build target is not a Dockerfile stage"


def test_compose_config_validates():
    """``docker-compose config`` accepts the file, and refuses it without FLOWER_BASIC_AUTH."""
    exe = shutil.which("docker-compose")
    if exe is None:
        # `make test` installs it; in CI (the CI variable set) the check must run, not skip.
        missing = "docker-compose is not installed (Debian: apt-get install docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}, and CI must validate docker-compose.yml")
        pytest.skip(missing)
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    cmd = [exe, "-f", str(COMPOSE_FILE), "config", "-q"]
    ok = subprocess.run(cmd, env={**env, "FLOWER_BASIC_AUTH": "admin:pw"}, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    # With the Kubernetes profile too (which services each way starts: test_compose_profiles_*;
    # docker-compose 1.29's `config --services` lists every profile's).
    profiled = subprocess.run([exe, "-f", str(COMPOSE_FILE), "--profile", "kubernetes", "config", "-q"],
                              env={**env, "FLOWER_BASIC_AUTH": "admin:pw", "LOG_SOURCE": "kubernetes"},
                              capture_output=True, text=True, timeout=60, check=False)
    assert profiled.returncode == 0, profiled.stderr
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "FLOWER_BASIC_AUTH" in refused.stderr


# ----- Dockerfile -----------------------------------------------------------------------


def test_dockerfile():
    text = DOCKERFILE.read_text()
    # One instruction a line: comments dropped, continuation lines joined.
    kept = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    lines = [line.strip() for line in kept.replace("\\\n", " ").splitlines() if line.strip()]
    assert lines[0].startswith("FROM python:3.11-slim")
    assert "pip install -c requirements.lock ." in text
    assert "[dev]" not in text
    assert re.search(r"^ENV .*PYTHONUNBUFFERED=1", text, re.M)
    # Each stage's parent, CMD, USER and COPY sources; the default target is the last stage.
    stages: dict[str, dict[str, str]] = {}
    copies: dict[str, list[str]] = {}
    current = ""
    for line in lines:
        if line.startswith("FROM "):
            parts = line.split()
            current = parts[3] if len(parts) > 3 else parts[1]
            stages[current] = {"FROM": parts[1]}
            copies[current] = []
        elif line.startswith(("CMD ", "USER ")):
            keyword, rest = line.split(None, 1)
            stages[current][keyword] = rest
        elif line.startswith("COPY "):
            copies[current] += [a.rstrip("/") for a in line.split()[1:-1] if not a.startswith("--")]

    def effective(stage: str, keyword: str) -> str | None:
        while stage in stages:
            if keyword in stages[stage]:
                return stages[stage][keyword]
            stage = stages[stage]["FROM"]
        return None

    def ancestry(stage: str) -> list[str]:
        chain = []
        while stage in stages:
            chain.append(stage)
            stage = stages[stage]["FROM"]
        return chain

    assert current == "scraper", "the default (last) target is the scraper image"
    for stage in (current, "flower", "dev-platform"):
        assert effective(stage, "USER") not in (None, "root", "0", "0:0"), f"stage {stage} runs as root"
    # The default target runs the worker on both queues.
    assert effective(current, "CMD") == '["celery", "-A", "app", "worker", "-Q", "fetch,report"]'
    assert "flower" in stages, "a separate target installs Flower"
    # The runtime images hold the product only: no simulator (sim/), no tests.
    product = {"pyproject.toml", "requirements.lock", "README.md", "beat_schedule.py", "app", "workers"}
    for stage in (current, "flower"):
        copied = {source for s in ancestry(stage) for source in copies[s]}
        assert copied <= product, f"stage {stage} copies {sorted(copied - product)}"
    # The dev platform: its own target on top of the same base, the stub and nothing else added.
    assert stages["dev-platform"]["FROM"] == stages[current]["FROM"]
    assert copies["dev-platform"] == ["sim"]
    assert effective("dev-platform", "CMD").startswith('["python", "-m", "sim.platform_stub"')
    for line in lines:
        if line.startswith(("ENV ", "ARG ")):
            assert not re.search(r"SECRET|PASSWORD|BASIC_AUTH", line, re.I), f"no secret baked in: {line}"
    # Every COPY source is in the repository and let through by .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {p[1:].rstrip("/") for p in ignore if p.startswith("!")}
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


def test_k8s_probes_are_the_health_files(docs):
    """Workers and beat are probed on the files app/health.py writes, with its commands:
    liveness that fails when a worker stops consuming or beat stops scheduling, readiness
    that fails when a worker cannot reach the broker (tests/integration/test_health.py)."""
    from app import health

    def shell(probe: dict) -> str:
        argv = probe["exec"]["command"]
        assert argv[:2] == ["sh", "-c"] and len(argv) == 3, argv
        return argv[2]

    for name in ("worker-fetch", "worker-report"):
        (container,) = _containers(_scraper_workload(docs, name))
        assert shell(container["livenessProbe"]) == health.LIVE_PROBE, name
        assert shell(container["readinessProbe"]) == health.READY_PROBE, name
        assert shell(container["startupProbe"]) == "test -s /tmp/health/live", name
    (container,) = _containers(_scraper_workload(docs, "beat"))
    assert shell(container["livenessProbe"]) == health.BEAT_PROBE
    assert shell(container["startupProbe"]) == "test -s /tmp/health/beat"
    assert "readinessProbe" not in container, "beat serves nothing; readiness would only slow a Recreate"


# ----- docker-compose.yml without a cluster: the file source ------------------------------

TRAEFIK_DIR = ROOT / "deploy" / "traefik"
COMPOSE_DEFAULT_SERVICES = {"redis", "platform", "whoami", "traefik", "loadgen", "worker-fetch", "worker-report", "beat",
                            "flower", "metrics"}


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """A service's volumes as {target: (source, read-only)}."""
    out = {}
    for v in service.get("volumes", []):
        parts = str(v).split(":")
        ro = parts[-1] == "ro"
        source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        out[target] = (source, ro)
    return out


def _settings_of(compose: dict, name: str, monkeypatch, **override: str) -> Settings:
    env = {k: _interpolate(v) for k, v in _environment(compose["services"][name]).items() if k in SETTINGS_VARS}
    return _settings_from({**env, **override}, monkeypatch)


def test_compose_profiles_default_runs_without_a_cluster(compose):
    """`docker compose up` starts the file source and the demo Traefik; the Kubernetes
    reader and the pod watcher only with `--profile kubernetes`."""
    services = compose["services"]
    assert {n for n, s in services.items() if not s.get("profiles")} == COMPOSE_DEFAULT_SERVICES
    assert {n: s["profiles"] for n, s in services.items() if s.get("profiles")} == {
        "worker-fetch-kubernetes": ["kubernetes"], "watcher": ["kubernetes"]}
    for name in ("worker-fetch-kubernetes", "watcher"):
        assert _environment(services[name])["LOG_SOURCE"] == "kubernetes", name


def test_compose_file_source_worker_beat_and_queues_agree_with_the_code(compose, monkeypatch):
    """What beat sends (both ways LOG_SOURCE may be set) goes to queues a worker of that
    mode consumes; the file worker plans on its own queue, declared; and the report side."""
    from beat_schedule import build_schedule

    services = compose["services"]
    fetch = _settings_of(compose, "worker-fetch", monkeypatch)
    assert fetch.log_source == "file" and fetch.file_queue == "fetch.files"
    assert _queues(services["worker-fetch"]) == [fetch.file_queue]
    assert _environment(services["beat"])["LOG_SOURCE"] == "${LOG_SOURCE:-file}"
    consumed = {
        "file": set(_queues(services["worker-fetch"])) | set(_queues(services["worker-report"])),
        "kubernetes": set(_queues(services["worker-fetch-kubernetes"])) | set(_queues(services["worker-report"])),
    }
    for source in ("file", "kubernetes"):
        beat = _settings_of(compose, "beat", monkeypatch, LOG_SOURCE=source)
        sent = {entry["options"]["queue"] for entry in build_schedule(beat).values()}
        assert sent <= consumed[source], (source, sent)
        # Declared where they are sent (task_create_missing_queues is off): app/celery.py
        # declares the two queues and the settings' file queues.
        assert sent <= {"fetch", "report", *beat.file_queue_names}, source
    beat = _settings_of(compose, "beat", monkeypatch)
    assert beat.file_plan_queues == [fetch.file_queue]
    # The reports: the report worker consumes what merge sends (queue report).
    assert _queues(services["worker-report"]) == ["report"]
    k8s = _settings_of(compose, "worker-fetch-kubernetes", monkeypatch)
    assert k8s.log_source == "kubernetes" and "fetch" in _queues(services["worker-fetch-kubernetes"])


def test_compose_traefik_writes_where_the_file_source_reads(compose, monkeypatch):
    """One Traefik configuration (deploy/traefik/traefik.yml and dynamic.yml, mounted by
    compose, run by tests/e2e/test_file_source.py): the access log is JSON, in a file on the
    volume the fetch worker mounts read-only where LOG_FILES looks; the tunnel router
    matches <label>.TUNNEL_DOMAIN and nothing else and leads to the demo backend; the
    published port is the web entry point; the load generator targets it."""
    import fnmatch

    services = compose["services"]
    traefik = services["traefik"]
    assert str(traefik["image"]).startswith("traefik:v3.")
    (config_arg,) = [a for a in _command(traefik) if a.startswith("--configFile=")]
    mounts = _mounts(traefik)
    static_target = config_arg.split("=", 1)[1]
    assert mounts[static_target] == ("./deploy/traefik/traefik.yml", True)
    static = yaml.safe_load((TRAEFIK_DIR / "traefik.yml").read_text())
    assert mounts[static["providers"]["file"]["filename"]] == ("./deploy/traefik/dynamic.yml", True)
    assert static["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}

    access = static["accessLog"]
    assert access["format"] == "json" and access.get("bufferingSize", 0) == 0
    assert "fields" not in access and "filters" not in access, "every line, with every core field, is metered"
    log_dir, log_name = access["filePath"].rsplit("/", 1)
    volume, ro = mounts[log_dir]
    assert volume in compose["volumes"] and ro is False
    fetch = _settings_of(compose, "worker-fetch", monkeypatch)
    assert _mounts(services["worker-fetch"])[log_dir] == (volume, True)
    assert fnmatch.fnmatch(access["filePath"], fetch.log_files)
    assert fnmatch.fnmatch(access["filePath"] + ".1", fetch.log_files), "LOG_FILES must also match renamed files"
    assert [n for n, s in services.items() if volume in _mounts(s).get(log_dir, ("",))] == ["traefik", "worker-fetch"]

    port = static["entryPoints"]["web"]["address"].rsplit(":", 1)[1]
    assert traefik["ports"] == [f"127.0.0.1:{port}:{port}"]
    dynamic = yaml.safe_load((TRAEFIK_DIR / "dynamic.yml").read_text())
    (router,) = dynamic["http"]["routers"].values()
    assert router["entryPoints"] == ["web"]
    regexp = re.fullmatch(r"HostRegexp\(`(.+)`\)", router["rule"]).group(1)
    domain = fetch.tunnel_domain
    for host in ("demo", "alpha", "bravo-2", "x1"):
        assert re.match(regexp, f"{host}.{domain}", re.I), host
    for host in (domain, f"a.b.{domain}", f"evil{domain}", f"demo.{domain}.evil.com", "example.com"):
        assert not re.match(regexp, host, re.I), host
    (server,) = dynamic["http"]["services"][router["service"]]["loadBalancer"]["servers"]
    assert server["url"].split("//", 1)[1].split(":")[0] == "whoami" and "whoami" in services
    assert str(services["whoami"]["image"]).startswith("traefik/whoami:")
    load = " ".join(_command(services["loadgen"]))
    assert f"http://traefik:{port}/" in load and f".{domain}" in load
    assert services["loadgen"]["depends_on"]["traefik"]["condition"] == "service_healthy"
    assert "--configFile=/etc/traefik/traefik.yml" in traefik["healthcheck"]["test"]
    assert static["ping"]["entryPoint"] in static["entryPoints"]


def test_env_example_holds_every_variable_and_no_secret():
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    used |= set(re.findall(r"^\s+([A-Z][A-Z0-9_]*):\s*$", text, re.M))  # passed on as set where compose runs
    example = ROOT / ".env.example"
    values = {}
    for line in example.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value
    assert set(values) == used, f"missing: {sorted(used - set(values))}, unused: {sorted(set(values) - used)}"
    for name in ("FLOWER_BASIC_AUTH", "PLATFORM_INTERNAL_SECRET"):
        assert values[name] == "", f"{name}: no secret in .env.example"
    # Defaults in .env.example are compose's own.
    for name, value in values.items():
        if value:
            (default,) = set(re.findall(r"\$\{" + name + r":-([^}]*)\}", text))
            assert value == default, name
    assert ".env" in (ROOT / ".gitignore").read_text().split(), "a .env holds secrets: git must ignore it"


def test_compose_exporter_sees_the_queues_beat_plans_on(compose):
    # The exporter lists fetch.<host> queues only with LOG_SOURCE=file and FILE_QUEUES set
    # (app/metrics.py): without them, compose's file rounds on fetch.files went unseen.
    env = {name: compose["services"][name]["environment"] for name in ("beat", "metrics")}
    for key in ("LOG_SOURCE", "FILE_QUEUES"):
        assert env["metrics"][key] == env["beat"][key], key
