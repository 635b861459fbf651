"""deploy/kubernetes.yaml: valid against Kubernetes' own schemas (kubernetes-validate, offline), and consistent
with the image: port, volume paths, user, the settings the entrypoint reads and the health endpoint."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tunelab.serve.app import HEALTH_PATH

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33.0"  # a release still supported by the providers' managed clusters


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict]:
    docs = [doc for doc in yaml.safe_load_all((REPO / "deploy" / "kubernetes.yaml").read_text()) if doc]
    kinds = {doc["kind"]: doc for doc in docs}
    assert sorted(kinds) == ["Deployment", "PersistentVolumeClaim", "Service"] and len(docs) == 3
    return kinds


def test_every_object_is_valid_for_kubernetes(manifest):
    import kubernetes_validate

    for doc in manifest.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = copy.deepcopy(manifest["Deployment"])  # the validator is real: a misspelt field fails it
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": HEALTH_PATH}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _container(manifest) -> dict:
    containers = manifest["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_port_and_probes_match_the_image(manifest, dockerfile):
    container = _container(manifest)
    env = {item["name"]: item.get("value") for item in container["env"]}
    (port,) = container["ports"]
    assert str(port["containerPort"]) == dockerfile.one("EXPOSE") == env["TUNELAB_PORT"] == dockerfile.env["TUNELAB_PORT"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": HEALTH_PATH, "port": port["name"]}, probe
    service = manifest["Service"]["spec"]
    assert [p["targetPort"] for p in service["ports"]] == [port["name"]]
    labels = manifest["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert manifest["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert set(container["resources"]) == {"requests", "limits"}


def test_env_names_are_the_entrypoints(manifest, dockerfile, entrypoint_settings):
    names = {item["name"] for item in _container(manifest)["env"]}
    assert names <= entrypoint_settings, f"the entrypoint reads none of {names - entrypoint_settings}"
    assert {"TUNELAB_RUNS_DIR", "TUNELAB_PORT", "TUNELAB_HOST", "TUNELAB_API_KEY"} <= names
    assert {name for name in dockerfile.env if name.startswith("TUNELAB_")} - {"TUNELAB_CACHE"} <= entrypoint_settings


def test_volumes_are_mounted_where_the_image_keeps_them(manifest, dockerfile):
    import json

    pod = manifest["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in _container(manifest)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = next(name for name, v in volumes.items() if "persistentVolumeClaim" in v)
    assert volumes[claim]["persistentVolumeClaim"]["claimName"] == manifest["PersistentVolumeClaim"]["metadata"]["name"]
    env = {item["name"]: item.get("value") for item in _container(manifest)["env"]}
    assert mounts[claim] == env["TUNELAB_RUNS_DIR"] == dockerfile.env["TUNELAB_RUNS_DIR"]
    image_volumes = json.loads(dockerfile.one("VOLUME"))
    assert set(image_volumes) <= set(mounts.values())  # the read-only root file system needs them mounted
    assert Path(dockerfile.env["TUNELAB_CACHE"]).is_relative_to(mounts["cache"])
    assert Path(dockerfile.env["HF_HOME"]).is_relative_to(mounts["cache"])


def test_runs_as_the_images_user(manifest, dockerfile):
    security = manifest["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    uid, gid = dockerfile.all("USER")[-1].split(":")
    assert security["runAsNonRoot"] is True
    assert (str(security["runAsUser"]), str(security["runAsGroup"]), str(security["fsGroup"])) == (uid, gid, gid)
