"""Checks the deployment files (Dockerfile, docker-compose.yml, deploy/): lints each with the pinned
tools of the `test` extra, and checks that they agree with the service they deploy: every
variable they set is a setting of service/config.py, ports and probe paths are the service's own,
and shutdown gives gunicorn its whole graceful timeout. No Docker engine or cluster is needed.

    .venv/bin/python -m pytest tests/test_deploy.py -q
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
GPU_OVERLAY = DEPLOY / "overlays" / "gpu"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus"
K8S_VERSION = "1.34.0"  # validated against; autoscaling/v2 and policy/v1 are GA since 1.23 / 1.21
PORT = 8000  # the port the image exposes and every probe, Service and scrape uses
NON_SETTINGS_OK = {"PATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "LD_LIBRARY_PATH",
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


def _manifests() -> list[Path]:
    """Every Kubernetes manifest under deploy/: YAML files that are neither a kustomization,
    nor a kustomize patch (validated once merged, below), nor a Prometheus config."""
    patches = _patch_files()
    return sorted(p for p in DEPLOY.rglob("*.yaml")
                  if p.name != "kustomization.yaml" and p.resolve() not in patches and PROMETHEUS not in p.parents)


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


def _settings_read_by_config() -> set[str]:
    """Environment variables service/config.py reads: every `(env, "NAME"` call and NEXTWORD_* string."""
    text = (ROOT / "service" / "config.py").read_text(encoding="utf-8")
    names = set(re.findall(r'\(env, "([A-Z][A-Z0-9_]*)"', text)) | set(re.findall(r'"(NEXTWORD_[A-Z0-9_]+)"', text))
    assert {"NEXTWORD_GRACEFUL_TIMEOUT", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"} <= names, "config.py parse broke"
    return names


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
    from flask import Flask

    from service.http import ops, predict, sessions

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


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_validates_strictly(path):
    _kubernetes_validate(path)


def test_gpu_overlay_merged_validates_and_requests_a_gpu(tmp_path):
    merged = _gpu_deployment()
    out = tmp_path / "deployment-gpu-merged.yaml"
    out.write_text(yaml.safe_dump(merged), encoding="utf-8")
    _kubernetes_validate(out)
    container = _container(merged)
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
    assert "pip install --no-cache-dir --no-deps ." in runs
    assert not re.search(r"\[(train|test)\b|torch", runs), "the image installs the service dependencies only"
    user = [args for i, args in instructions if i == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert ("EXPOSE", str(PORT)) in instructions
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    assert ("ENTRYPOINT", '["python", "-m", "service"]') in instructions
    copied = " ".join(args for i, args in instructions if i == "COPY")
    assert "service/" in copied and "models/" in copied
    env = _dockerfile_env()
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
    deployment_env = [e["name"] for e in _container(_gpu_deployment()).get("env", [])]
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
        assert [p.rsplit(":", 1)[1] for p in svc["ports"]] == [str(PORT)]
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
    from service.http.auth import OPEN_ENDPOINTS

    routes = _routes()
    container = _container(_deployment())
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths.add(_deployment()["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    paths.add(yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]["metrics_path"])
    paths |= {_url_port_path(u)[1] for u in _healthcheck_urls()}
    assert paths >= {"/healthz", "/readyz", "/metrics"}
    for path in sorted(paths):
        assert path in routes, f"{path} is not a GET route of service/http"
        assert routes[path] in OPEN_ENDPOINTS, \
            f"{path} (endpoint {routes[path]!r}) requires an API key: add it to OPEN_ENDPOINTS in service/http/auth.py"


def test_shutdown_gives_gunicorn_its_graceful_timeout():
    """SIGTERM comes after preStop; gunicorn then needs NEXTWORD_GRACEFUL_TIMEOUT before SIGKILL."""
    for deployment in (_deployment(), _gpu_deployment()):
        spec = deployment["spec"]["template"]["spec"]
        graceful = int(_one("ConfigMap", "nextword-config")["data"].get("NEXTWORD_GRACEFUL_TIMEOUT",
                                                                      Settings.graceful_timeout))
        command = _container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        assert spec["terminationGracePeriodSeconds"] > int(command[1]) + graceful
    for svc in _compose_nextword_services().values():
        graceful = int(svc["environment"].get("NEXTWORD_GRACEFUL_TIMEOUT", Settings.graceful_timeout))
        assert _duration_seconds(svc["stop_grace_period"]) > graceful


def test_deployment_is_hardened_and_sized():
    deployment = _deployment()
    spec = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert deployment["spec"]["replicas"] >= 2
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
