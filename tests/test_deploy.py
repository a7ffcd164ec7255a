"""Checks the deployment files (Dockerfile, docker-compose.yml, deploy/): lints each with the pinned
tools of the `test` extra, and checks that they agree with the service they deploy: every
variable they set is a setting of service/config.py, ports and probe paths are the service's own,
shutdown gives gunicorn its whole graceful timeout, and the monitoring kit (alert rules with their
promtool unit tests, the dashboard, the ServiceMonitor, the autoscaling metric) names only metrics
that service/metrics.py exports. No Docker engine or cluster is needed; `make image-smoke` runs the
real image.

    .venv/bin/python -m pytest tests/test_deploy.py -q
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from flask import Flask
from prometheus_client.metrics import MetricWrapperBase

import service.metrics
from service.config import Settings, variables
from service.http import ops, predict, sessions
from service.http.auth import open_endpoints

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
GPU_OVERLAY = DEPLOY / "overlays" / "gpu"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus"
MONITORING = DEPLOY / "monitoring"
MODELS_OVERLAY = DEPLOY / "overlays" / "models-volume"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
K8S_VERSION = "1.34.0"  # validated against; autoscaling/v2 and policy/v1 are GA since 1.23 / 1.21
PORT = 8000  # the port the image exposes and every probe, Service and scrape uses
NON_SETTINGS_OK = {"PATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONPATH", "LD_LIBRARY_PATH",
                   "NVIDIA_DRIVER_CAPABILITIES", "ORT_DISABLE_TELEMETRY", "HOME", "PIP_DISABLE_PIP_VERSION_CHECK"}


# --------------------------------------------------------------------------- helpers

def _tool(name: str) -> str:
    """A linter from the `test` extra: this interpreter's bin dir first (the venv), then PATH.
    Missing is a failure, not a skip: `pip install -e '.[test]'` installs it."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` not found: it is pinned in pyproject.toml's `test` extra (pip install -e '.[test]')")
    return found


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=60)


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def _patch_files() -> set[Path]:
    out = set()
    for kpath in _kustomizations():
        for patch in yaml.safe_load(kpath.read_text(encoding="utf-8")).get("patches", []):
            out.add((kpath.parent / patch["path"]).resolve())
    return out


def _is_operator_resource(path: Path) -> bool:
    """Prometheus Operator custom resources: no schema in kubernetes-validate (checked below instead)."""
    return any(doc.get("apiVersion", "").startswith("monitoring.coreos.com/") for doc in _load_all(path))


def _manifests() -> list[Path]:
    """Every Kubernetes manifest of the core API under deploy/: YAML files that are neither a
    kustomization, nor a kustomize patch (validated once merged, below), nor a Prometheus config,
    nor a Prometheus Operator resource."""
    patches = _patch_files()
    return sorted(p for p in DEPLOY.rglob("*.yaml")
                  if p.name != "kustomization.yaml" and p.resolve() not in patches and PROMETHEUS not in p.parents
                  and not _is_operator_resource(p))


def _resources() -> list[dict]:
    return [doc for path in _manifests() for doc in _load_all(path)]


def _one(kind: str, name: str | None = None) -> dict:
    found = [r for r in _resources() if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} under deploy/, found {len(found)}"
    return found[0]


def _deployment() -> dict:
    return _one("Deployment", "nextword")


def _container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "nextword")


def _strategic_merge(base, patch):
    """kustomize's strategic merge for what our patches use: maps merge, lists of named maps
    (containers, env, volumes, ports) merge by name, anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    def named(xs) -> bool:
        return isinstance(xs, list) and all(isinstance(x, dict) and "name" in x for x in xs)

    if named(base) and named(patch):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            index = next((i for i, x in enumerate(out) if x["name"] == item["name"]), None)
            if index is None:
                out.append(copy.deepcopy(item))
            else:
                out[index] = _strategic_merge(out[index], item)
        return out
    return copy.deepcopy(patch)


def _gpu_deployment() -> dict:
    return _strategic_merge(_deployment(), yaml.safe_load((GPU_OVERLAY / "deployment-gpu.yaml").read_text()))


def _gpu_hpa() -> dict:
    return _strategic_merge(_one("HorizontalPodAutoscaler"), yaml.safe_load((GPU_OVERLAY / "hpa-gpu.yaml").read_text()))


def _models_volume_deployment() -> dict:
    patch = yaml.safe_load((MODELS_OVERLAY / "deployment-models-volume.yaml").read_text())
    return _strategic_merge(_deployment(), patch)


def _settings_read_by_config() -> set[str]:
    """Environment variables service/config.py reads."""
    return set(variables().values())


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        instruction, _, args = current.strip().partition(" ")
        lines.append((instruction.upper(), args.strip()))
        current = ""
    return lines


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, args in _dockerfile_instructions():
        if instruction == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _compose_nextword_services() -> dict[str, dict]:
    return {name: svc for name, svc in _compose()["services"].items() if name.startswith("nextword")}


def _duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"unparsed duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _routes() -> dict[str, str]:
    """GET path -> endpoint of the service's real blueprints (no bundles or Redis needed)."""
    app = Flask("routes")
    for module in (ops, predict, sessions):
        app.register_blueprint(module.bp)
    return {rule.rule: rule.endpoint for rule in app.url_map.iter_rules() if "GET" in (rule.methods or ())}


def _url_port_path(url: str) -> tuple[int, str]:
    parts = urlsplit(url)
    return parts.port, parts.path


def _healthcheck_urls() -> list[str]:
    """URLs the Dockerfile HEALTHCHECK and the compose healthchecks fetch."""
    texts = [args for instruction, args in _dockerfile_instructions() if instruction == "HEALTHCHECK"]
    texts += [" ".join(svc["healthcheck"]["test"]) for svc in _compose_nextword_services().values()]
    urls = [u for text in texts for u in re.findall(r"http://[^'\"\s]+", text)]
    assert len(urls) == len(texts), f"every healthcheck should fetch one URL: {texts}"
    return urls


# --------------------------------------------------------------------------- linters

def test_hadolint_dockerfile():
    result = _run(_tool("hadolint"), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_matches_compose_spec():
    result = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def _kubernetes_validate(*paths: Path) -> None:
    result = _run(_tool("kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, *map(str, paths))
    # --quiet prints only warnings and failures; a kind without a schema is only a warning (exit 0)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr


def _validated_container(deployment: dict, out: Path) -> dict:
    """An overlay's merged Deployment, written to `out` and validated strictly; its nextword container."""
    out.write_text(yaml.safe_dump(deployment), encoding="utf-8")
    _kubernetes_validate(out)
    return _container(deployment)


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_validates_strictly(path):
    _kubernetes_validate(path)


def test_gpu_overlay_merged_validates_and_requests_a_gpu(tmp_path):
    container = _validated_container(_gpu_deployment(), tmp_path / "deployment-gpu-merged.yaml")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "NEXTWORD_DEVICE", "value": "cuda"} in container["env"]
    overlay = yaml.safe_load((GPU_OVERLAY / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../../base"]


def test_kustomizations_list_every_manifest():
    listed = {(BASE / r).resolve() for r in yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]}
    present = {p.resolve() for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert present - listed == {(BASE / "secret.example.yaml").resolve()}, "only the example Secret stays unlisted"
    assert listed <= present
    assert yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"] == ["base"]


def test_kustomize_build_validates(tmp_path):
    """The rendered output of both kustomizations; kubectl (with kustomize built in) is optional."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: rendering with kustomize not checked (the manifests and the merged "
                    "GPU patch are validated by the tests above)")
    for name, folder in (("base", DEPLOY), ("gpu", GPU_OVERLAY)):
        result = _run(kubectl, "kustomize", str(folder))
        assert result.returncode == 0, result.stderr
        out = tmp_path / f"{name}.yaml"
        out.write_text(result.stdout, encoding="utf-8")
        _kubernetes_validate(out)
        if name == "gpu":
            rendered = next(d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Deployment")
            expected = _gpu_deployment()
            _container(expected)["image"] = _container(expected)["image"].split(":")[0] + ":0.1.0-gpu"
            assert rendered == expected, "kustomize's merge differs from the one these tests validate"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian package `prometheus`): Prometheus configs not checked")
    return promtool


def test_promtool_compose_config():
    result = _run(_promtool(), "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_kubernetes_relabel_rules(tmp_path):
    """The Kubernetes job with its discovery swapped for a static target: checks the relabel rules
    with any promtool build (Debian's is built without Kubernetes discovery)."""
    config = yaml.safe_load((PROMETHEUS / "kubernetes.yml").read_text())
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{PORT}"]}]
    out = tmp_path / "kubernetes-static.yml"
    out.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = _run(_promtool(), "check", "config", str(out))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_kubernetes_config():
    result = _run(_promtool(), "check", "config", str(PROMETHEUS / "kubernetes.yml"))
    if result.returncode != 0 and "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        pytest.skip("this promtool is built without Kubernetes service discovery (Debian's is): the "
                    "kubernetes_sd_configs block is unchecked; its relabel rules are checked above")
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- the image

def test_dockerfile_shape():
    instructions = _dockerfile_instructions()
    froms = [args for i, args in instructions if i == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    default_base = next(args for i, args in instructions if i == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim(-\w+)?", default_base), default_base
    runs = " ".join(args for i, args in instructions if i == "RUN")
    assert "-c constraints.txt" in runs and "pip check" in runs, "exact versions, and vouched for"
    assert ("ARG", "ONNXRUNTIME=onnxruntime") in instructions, "the default image is the CPU build of onnxruntime"
    assert not re.search(r"\[(train|test)\b|torch", runs), "the image installs the service dependencies only"
    user = [args for i, args in instructions if i == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert ("EXPOSE", str(PORT)) in instructions
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    assert ("ENTRYPOINT", '["python", "-m", "service"]') in instructions
    copied = " ".join(args for i, args in instructions if i == "COPY")
    assert "service/ /app/service/" in copied and "models/" in copied and "LICENSE" in copied
    env = _dockerfile_env()
    assert env["PYTHONPATH"] == "/app", "the service is copied, not installed: python -m service finds it here"
    labels = " ".join(args for i, args in instructions if i == "LABEL")
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels
    assert env["NEXTWORD_BIND"] == f"0.0.0.0:{PORT}"
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/"), "must be on the writable /tmp mount"


def test_dockerignore_keeps_heavy_and_private_files_out():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs", "var", ".pytest_cache", "**/*.pt"} <= ignored
    assert not {"service", "models", "pyproject.toml"} & ignored


# --------------------------------------------------------------------------- agreement with the service

def test_every_variable_set_is_a_setting():
    settings = _settings_read_by_config()
    configmap = _one("ConfigMap", "nextword-config")["data"]
    secret = _one("Secret", "nextword-api-keys")["stringData"]
    deployment_env = [e["name"] for d in (_gpu_deployment(), _models_volume_deployment())
                      for e in _container(d).get("env", [])]
    compose_env = [k for svc in _compose_nextword_services().values() for k in svc["environment"]]
    docker_env = [k for k in _dockerfile_env() if k not in NON_SETTINGS_OK]
    for source, names in (("configmap", configmap), ("secret", secret), ("deployment/gpu patch", deployment_env),
                          ("docker-compose.yml", compose_env), ("Dockerfile ENV", docker_env)):
        unknown = sorted(set(names) - settings)
        assert not unknown, f"{source} sets {unknown}, which service/config.py never reads"
    for value in (configmap, {k: v for k, v in _compose()["x-nextword-env"].items() if "${" not in str(v)}):
        Settings.from_env({k: str(v) for k, v in value.items()})  # every value parses (ConfigError otherwise)


def test_ports_agree():
    deployment = _deployment()
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}
    def resolve(port):  # a probe or Service may name the container's port
        return ports.get(port, port)

    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert resolve(container[probe]["httpGet"]["port"]) == PORT, probe
    service = _one("Service", "nextword")
    assert [(p["port"], resolve(p["targetPort"])) for p in service["spec"]["ports"]] == [(PORT, PORT)]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(PORT)
    configmap = _one("ConfigMap", "nextword-config")["data"]
    assert configmap["NEXTWORD_BIND"].rsplit(":", 1)[1] == str(PORT)
    for svc in _compose_nextword_services().values():
        assert "ports" not in svc, "clients reach the service through the proxy only"
        assert svc["expose"] == [str(PORT)]
    assert all(_url_port_path(u)[0] == PORT for u in _healthcheck_urls())
    targets = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"]
    assert targets[0]["targets"] == [f"nextword:{PORT}"]


def test_redis_url_points_at_the_redis_that_is_deployed():
    redis_service = _one("Service", "redis")
    host, port = urlsplit(_one("ConfigMap", "nextword-config")["data"]["REDIS_URL"]).netloc.split(":")
    assert (host, int(port)) == (redis_service["metadata"]["name"], redis_service["spec"]["ports"][0]["port"])
    assert _one("StatefulSet", "redis")["spec"]["serviceName"] == host
    compose = _compose()
    host, _ = urlsplit(compose["x-nextword-env"]["REDIS_URL"]).netloc.split(":")
    assert host in compose["services"]
    for svc in _compose_nextword_services().values():
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"


def test_probe_and_scrape_paths_are_open_routes_of_the_service():
    """kubelet, Docker and Prometheus send no API key: each path they fetch must be a GET route
    of service/http, and exempt from authentication."""
    routes = _routes()
    container = _container(_deployment())
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths.add(_deployment()["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    paths.add(yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]["metrics_path"])
    paths |= {_url_port_path(u)[1] for u in _healthcheck_urls()}
    assert paths >= {"/healthz", "/readyz", "/metrics"}
    for path in sorted(paths):
        assert path in routes, f"{path} is not a GET route of service/http"
        assert routes[path] in open_endpoints(), \
            f"{path} (endpoint {routes[path]!r}) requires an API key: declare its route open=True (service/http/api.py)"


def test_shutdown_gives_gunicorn_its_graceful_timeout():
    """SIGTERM comes after preStop; gunicorn then needs NEXTWORD_GRACEFUL_TIMEOUT before SIGKILL."""
    for deployment in (_deployment(), _gpu_deployment()):
        spec = deployment["spec"]["template"]["spec"]
        graceful = int(_one("ConfigMap", "nextword-config")["data"].get("NEXTWORD_GRACEFUL_TIMEOUT",
                                                                      Settings().graceful_timeout))
        command = _container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        assert spec["terminationGracePeriodSeconds"] > int(command[1]) + graceful
    for svc in _compose_nextword_services().values():
        graceful = int(svc["environment"].get("NEXTWORD_GRACEFUL_TIMEOUT", Settings().graceful_timeout))
        assert _duration_seconds(svc["stop_grace_period"]) > graceful


def test_deployment_is_hardened_and_sized():
    deployment = _deployment()
    spec = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert _one("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    assert spec["securityContext"]["runAsNonRoot"] is True
    image_user = [args for i, args in _dockerfile_instructions() if i == "USER"][-1].split(":")[0]
    assert str(spec["securityContext"]["runAsUser"]) == image_user, "runAsUser is the image's user"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "the metrics dir (/tmp) needs a writable emptyDir"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"


def test_service_hpa_and_pdb_select_the_deployment():
    deployment = _deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    def selects(selector: dict) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(_one("Service", "nextword")["spec"]["selector"])
    pdb = _one("PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"]) and pdb["spec"]["minAvailable"] == 1
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"]) == ("Deployment", "nextword")
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_third_party_images_are_pinned():
    images = [svc["image"] for name, svc in _compose()["services"].items() if "build" not in svc]
    images += [c["image"] for r in _resources() if r["kind"] in ("StatefulSet", "Deployment")
               for c in r["spec"]["template"]["spec"]["containers"] if not c["image"].startswith("nextword")]
    assert images
    for image in images:
        assert re.search(r":v?\d+\.\d+\.\d+", image), f"{image} is not pinned to a version"


# --------------------------------------------------------------------------- monitoring kit

ALERTS = PROMETHEUS / "alerts.yml"
DASHBOARD = MONITORING / "nextword-dashboard.json"


def _exported_series() -> dict[str, str]:
    """Series name -> metric type, for every metric service/metrics.py declares (the one home of
    metric names): counters as `_total`, histograms as `_bucket`/`_sum`/`_count`."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    out = {}
    for value in vars(service.metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                out.update({family.name + suffix: family.type for suffix in suffixes[family.type]})
    assert "nextword_active_streams" in out and "nextword_http_requests_total" in out, "metrics parse broke"
    return out


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bnextword_[a-z_]+\b", text))


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_alert_rules_pass_promtool_check():
    result = _run(_promtool(), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass():
    """deploy/prometheus/alerts.test.yml: each alert fires on its input series, after its `for:`,
    with its labels and rendered annotations, and stays quiet on a healthy fleet."""
    result = _run(_promtool(), "test", "rules", "alerts.test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts.test.yml").read_text()))
    defined = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert defined <= tested, f"alerts without a unit test: {sorted(defined - tested)}"


def test_compose_prometheus_loads_the_alert_rules():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    mounts = _compose()["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_prometheus_rule_wraps_the_alert_rules_unchanged():
    rule = _load_all(MONITORING / "prometheusrule.yaml")[0]
    assert rule["kind"] == "PrometheusRule" and rule["metadata"]["namespace"] == "nextword"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], \
        "deploy/monitoring/prometheusrule.yaml is stale: run `make monitoring`"


@pytest.mark.parametrize("path", [ALERTS, DASHBOARD, PROMETHEUS / "adapter-rules.yml", GPU_OVERLAY / "hpa-gpu.yaml"],
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_monitoring_names_only_exported_metrics(path):
    names = _metric_names(path.read_text(encoding="utf-8"))
    assert names, f"{path.name} names no nextword metric"
    unknown = sorted(names - set(_exported_series()))
    assert not unknown, f"{path.name} uses {unknown}, which service/metrics.py does not export"


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Each panel query, with Grafana's $__rate_interval filled in, as a recording rule: promtool
    parses every expression."""
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(exprs)]}]}
    out = tmp_path / "dashboard-rules.yml"
    out.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = _run(_promtool(), "check", "rules", str(out))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_covers_every_exported_metric():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for expr in _dashboard_exprs() for name in _metric_names(expr)}
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in _exported_series()}
    assert families <= shown, f"metrics on no panel: {sorted(families - shown)}"


def test_service_monitor_scrapes_each_pod_of_the_service():
    monitor = _load_all(MONITORING / "servicemonitor.yaml")[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    service = _one("Service", "nextword")
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["path"] in _routes()
    assert _duration_seconds(endpoint["scrapeTimeout"]) < _duration_seconds(endpoint["interval"])
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == ["prometheusrule.yaml", "servicemonitor.yaml"]
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == [DASHBOARD.name] and generator["options"]["labels"]["grafana_dashboard"] == "1"


def test_compose_grafana_shows_the_shipped_dashboard_on_the_compose_prometheus():
    """docker-compose.yml's Grafana: its provisioning points the datasource at the compose Prometheus and loads the
    dashboard file from where the compose file mounts the shipped one (no image can be pulled here to try it)."""
    compose = _compose()
    grafana = compose["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"] if volume.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_at = mounts["./" + str(DASHBOARD.relative_to(ROOT))]
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    host, port = urlsplit(source["url"]).netloc.split(":")
    assert host in compose["services"] and "prometheus" in compose["services"][host]["image"]
    assert f"{port}:{port}" in compose["services"][host]["ports"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "nextword.yml").read_text())["providers"]
    assert provider["type"] == "file" and Path(dashboard_at).parent == Path(provider["options"]["path"])
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_at
    variable = json.loads(DASHBOARD.read_text())["templating"]["list"][0]
    assert (variable["type"], variable["query"]) == ("datasource", source["type"]), "the dashboard finds the source"


def test_alerts_select_the_job_both_scrape_setups_produce():
    """alerts.yml and the dashboard select job="nextword": the ServiceMonitor's job is the Service's
    name; the annotation-based job relabels `job` from the app label; compose names its job so."""
    assert 'job="nextword"' in ALERTS.read_text()
    assert _one("Service", "nextword")["metadata"]["labels"]["app.kubernetes.io/name"] == "nextword"
    relabels = yaml.safe_load((PROMETHEUS / "kubernetes.yml").read_text())["scrape_configs"][0]["relabel_configs"]
    targets = {r.get("target_label"): r.get("source_labels") for r in relabels}
    assert targets["job"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    assert {"namespace", "pod"} <= set(targets), "prometheus-adapter needs namespace and pod labels"
    assert yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]["job_name"] == "nextword"


# --------------------------------------------------------------------------- autoscaling, models, Redis, probes

def test_gpu_overlay_scales_on_active_streams_through_the_adapter(tmp_path):
    hpa = _gpu_hpa()
    out = tmp_path / "hpa-gpu-merged.yaml"
    out.write_text(yaml.safe_dump(hpa), encoding="utf-8")
    _kubernetes_validate(out)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods", "a serving metric per pod, not CPU"
    name = metric["pods"]["metric"]["name"]
    assert _exported_series()[name] == "gauge"
    assert hpa["spec"]["minReplicas"] >= 2 and "replicas" not in _gpu_deployment()["spec"]
    # below the streams one pod takes, so scale-out comes before streams are refused
    configmap = _one("ConfigMap", "nextword-config")["data"]
    assert float(metric["pods"]["target"]["averageValue"]) < int(configmap["NEXTWORD_WORKERS"]) * int(
        configmap["NEXTWORD_MAX_STREAMS"])
    (rule,) = yaml.safe_load((PROMETHEUS / "adapter-rules.yml").read_text())["rules"]["custom"]
    assert rule["name"]["as"] == name and name in rule["seriesQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    overlay = yaml.safe_load((GPU_OVERLAY / "kustomization.yaml").read_text())
    assert {p["path"] for p in overlay["patches"]} == {"deployment-gpu.yaml", "hpa-gpu.yaml"}


def test_models_volume_overlay_mounts_bundles_read_only(tmp_path):
    deployment = _models_volume_deployment()
    container = _validated_container(deployment, tmp_path / "deployment-models-volume-merged.yaml")
    env = {e["name"]: e["value"] for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert env["NEXTWORD_MODELS_DIR"] == mount["mountPath"] and mount["readOnly"] is True
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    pvc = next(d for d in _load_all(MODELS_OVERLAY / "models-pvc.yaml") if d["kind"] == "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"], "every API pod mounts it"
    overlay = yaml.safe_load((MODELS_OVERLAY / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../../base", "models-pvc.yaml"]


def _redis_flags(args: list[str]) -> dict[str, str]:
    args = [a for a in args if a != "redis-server"]
    return {a[2:]: b for a, b in zip(args[::2], args[1::2])}


def _mebibytes(text: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]+)", text).groups()
    return int(number) * {"mb": 1, "gb": 1024, "Mi": 1, "Gi": 1024}[unit]


def test_redis_has_a_memory_limit_and_evicts_idle_sessions():
    """Compose and Kubernetes set maxmemory and the same volatile-* policy (deploy/README.md,
    "Redis memory"): every session key has a TTL, so only those are candidates."""
    compose = _redis_flags(_compose()["services"]["redis"]["command"])
    container = _one("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    k8s = _redis_flags(container["args"])
    for flags in (compose, k8s):
        assert flags["maxmemory-policy"] == "volatile-lru"
        assert _mebibytes(flags["maxmemory"]) > 0
        assert "E" in flags["notify-keyspace-events"] and "x" in flags["notify-keyspace-events"]
    # the container's memory limit leaves room above maxmemory for the fork of an AOF rewrite
    assert _mebibytes(container["resources"]["limits"]["memory"]) >= 2 * _mebibytes(k8s["maxmemory"])


def test_readiness_does_not_depend_on_redis():
    """All pods share one Redis: a readiness probe on /readyz would empty the Service during a Redis
    outage and take stateless /predict down with it. Readiness is /healthz; /readyz stays for the
    compose healthcheck and monitoring."""
    for deployment in (_deployment(), _gpu_deployment(), _models_volume_deployment()):
        assert _container(deployment)["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert all(_url_port_path(u)[1] == "/readyz" for u in _healthcheck_urls()[1:]), "compose: healthy = ready"


# --------------------------------------------------------------------------- the reverse proxy

def _nginx_directives() -> list[tuple[str, str]]:
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text(encoding="utf-8"))
    return [(m.group(1), m.group(2).strip()) for m in re.finditer(r"(?m)^\s*([a-z_0-9]+)\s+([^;{]*)[;{]", text)]


def test_compose_puts_the_buffering_proxy_in_front():
    proxy = _compose()["services"]["proxy"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", proxy["image"])
    assert [p.split(":")[0] for p in proxy["ports"]] == [str(PORT)], "clients keep using port 8000"
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert proxy["read_only"] is True and proxy["tmpfs"] == ["/tmp"]
    directives = dict(_nginx_directives())
    listen = [v for k, v in _nginx_directives() if k == "listen"]
    assert [p.split(":")[1] for p in proxy["ports"]] == listen
    assert f"nextword:{PORT}" in [v for k, v in _nginx_directives() if k == "server" and ":" in v][0]
    assert _duration_seconds(directives["client_header_timeout"]) <= 10
    assert _duration_seconds(directives["client_body_timeout"]) <= 10
    assert directives["proxy_request_buffering"] == "on"
    size = directives["client_max_body_size"]
    assert int(size.rstrip("k")) * 1024 == Settings().max_body_bytes, "the proxy's body limit is the service's"


def test_proxy_streams_generations_unbuffered():
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text(encoding="utf-8"))
    block = re.search(r"location ~ (\S+) \{([^}]*)\}", text)
    pattern, body = re.compile(block.group(1)), block.group(2)
    assert pattern.match("/sessions/abc123/generate") and not pattern.match("/predict")
    assert re.search(r"proxy_buffering\s+off;", body) and re.search(r"proxy_cache\s+off;", body)


def test_nginx_accepts_the_proxy_config(tmp_path):
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx not on PATH (Debian package `nginx`): the proxy config's syntax is not checked")
    # `nextword` resolves only inside compose, and Debian's nginx 1.22 predates `resolve`;
    # everything else is the file as shipped
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.read_text(encoding="utf-8").replace(f"server nextword:{PORT} resolve;",
                                                                      f"server 127.0.0.1:{PORT};"))
    result = _run(nginx, "-t", "-q", "-c", str(conf), "-e", str(tmp_path / "error.log"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_api_pods_memory_follows_docs_limits():
    """docs/limits.md: 2 workers at rest and under load (~0.85 GB) fit the request, and the limit keeps half again
    over the worst case the work budget allows (2 x 500 MB)."""
    [deployment] = [r for r in _resources() if r["kind"] == "Deployment" and r["metadata"]["name"] == "nextword"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    assert 0.85 * 1024 <= _mebibytes(resources["requests"]["memory"]) <= _mebibytes(resources["limits"]["memory"])
    assert _mebibytes(resources["limits"]["memory"]) >= 1.5 * 1000
