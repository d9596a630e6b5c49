"""deploy/kubernetes/, checked offline: each manifest against the Kubernetes schema (kubernetes-validate ships
them), then the fields the deployment relies on against the files they must agree with: the Dockerfile (user,
ports, key volume), the image's properties, the archive's worker count and the measured RSS and CPU in reports/."""
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from conftest import REPO
from deploy.container_config import CONTAINER_CONFIG, container_config
from serving.config import CONFIG, ServeConfig

MANIFESTS = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"
DOCKERFILE = (REPO / "Dockerfile").read_text()
APP = Path("/opt/hotdog")  # the Dockerfile's WORKDIR for the code


def load(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


@pytest.fixture(scope="module")
def deployment() -> dict:
    return load("deployment.yaml")


def containers(deployment) -> dict:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def quantity(value: str) -> float:
    """A Kubernetes CPU or memory quantity as a number (cores; bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()
    return float(number) * units[unit]


def dockerfile(instruction: str) -> list[str]:
    return re.findall(rf"^{instruction}\s+(.+)$", DOCKERFILE, re.MULTILINE)


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "hpa.yaml"])
def test_manifest_is_valid_kubernetes(name):
    kubernetes_validate.validate(load(name), KUBERNETES_VERSION, strict=True)


def test_validation_catches_a_misspelt_field(deployment):
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {"httpGet": {"path": "/ping", "port": 8080}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readynessProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    listed = set(load("kustomization.yaml")["resources"])
    assert listed == {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}


def test_service_and_autoscaler_select_the_deployments_pods(deployment):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = load("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    named_ports = {p["name"] for c in containers(deployment).values() for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= named_ports
    target = load("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_torchserve_container_matches_the_image(deployment):
    spec = deployment["spec"]["template"]["spec"]
    ts = containers(deployment)["torchserve"]
    image_ports = {int(p) for line in dockerfile("EXPOSE") for p in line.split()}
    assert {p["containerPort"] for p in ts["ports"]} == image_ports
    # The probes run the image's HEALTHCHECK (/ping with the pod's key), and its port is the one the image opens.
    inference_port = urlsplit(container_config(ServeConfig.load(CONFIG))["inference_address"]).port
    assert {p["name"]: p["containerPort"] for p in ts["ports"]}["http"] == inference_port
    healthcheck = json.loads(re.search(r"^HEALTHCHECK .*CMD (\[.*\])$", DOCKERFILE, re.MULTILINE).group(1))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ts[probe]["exec"]["command"] == healthcheck, probe
    uid = int(re.search(r"useradd .*--uid (\d+)", DOCKERFILE).group(1))
    assert spec["securityContext"]["runAsUser"] == uid and spec["securityContext"]["runAsNonRoot"] is True


def test_the_key_volume_is_shared_by_torchserve_and_the_proxy_only_in_memory(deployment):
    keys_dir = re.search(r"^ENV HOTDOG_KEYS=(\S+)", DOCKERFILE, re.MULTILINE).group(1)
    assert dockerfile("VOLUME") == [keys_dir]
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "keys")
    assert volume["emptyDir"]["medium"] == "Memory"
    mounts = {name: next(m for m in c["volumeMounts"] if m["name"] == "keys")
              for name, c in containers(deployment).items()}
    assert {m["mountPath"] for m in mounts.values()} == {keys_dir}
    assert mounts["proxy"].get("readOnly") is True
    proxy = containers(deployment)["proxy"]
    args = dict(zip(proxy["command"], proxy["command"][1:]))
    assert args["--workdir"] == keys_dir
    assert args["--config"] == str(APP / CONTAINER_CONFIG.relative_to(REPO))
    assert proxy["image"] == containers(deployment)["torchserve"]["image"]


def test_requests_cover_the_measured_memory_and_cpu_of_one_server(deployment):
    """reports/soak.json: RSS of all workers and of the frontend under load; reports/bench_serve.json: the
    cores the default server keeps busy. A pod must request at least that, and not twice that."""
    model_config = yaml.safe_load((REPO / "serve_config" / "model-config.yaml").read_text())
    workers, threads = model_config["minWorkers"], model_config["handler"]["threads"]
    soak = json.loads((REPO / "reports" / "soak.json").read_text())
    assert len(soak["worker_pids"]) == workers  # the soak measured this worker count
    rss_bytes = (soak["worker_rss_mb"]["max_during"] + soak["frontend_rss_mb"]["end"]) * 1e6
    resources = containers(deployment)["torchserve"]["resources"]
    memory = quantity(resources["requests"]["memory"])
    assert rss_bytes <= memory < 2 * rss_bytes
    assert quantity(resources["limits"]["memory"]) > memory
    busy = max(level["server_cores_used"]
               for level in json.loads((REPO / "reports" / "bench_serve.json").read_text())
               ["servers"]["ts-default"]["levels"].values())
    cpu = quantity(resources["requests"]["cpu"])
    assert max(busy, workers * threads) <= cpu < 2 * busy


def test_autoscaler_scales_on_cpu_with_every_container_requesting_cpu(deployment):
    hpa = load("hpa.yaml")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and 0 < metric["resource"]["target"]["averageUtilization"] < 100
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert all("cpu" in c["resources"]["requests"] for c in containers(deployment).values())
