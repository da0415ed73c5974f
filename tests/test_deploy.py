"""deploy/: the manifests are valid Kubernetes objects and agree with the agent they run.

Three layers: every object validates against the Kubernetes OpenAPI schema (kubernetes-validate,
strict: unknown fields are errors); the settings that matter in operation are asserted (host
network, priority, GPU tolerations, probes on the agent's real endpoints, security contexts);
and the configuration is run through the agent's own code: the ConfigMap through its config
loader, the init container's arguments through its CLI, which writes the hosts.toml files
checked here. The kustomize package is rendered with ``kubectl kustomize`` (skipped, with the
reason, where its kustomize is older than 5.1): the image, the namespace and each port changed
in one place reach every object that names them. That real containerd pulls through such
hosts.toml files (and falls back to ``server``) is established in
tests/test_realparts_containerd.py and tests/test_realparts_cri.py and not repeated here.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from agent.cli import build_parser
from agent.config import AgentConfig, add_agent_arguments, env_name, load_agent_config
from p2pull.containerd import BACKUP_NAME, HOSTS_NAME, default_server

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
MANIFESTS = sorted(path for path in DEPLOY.glob("*.yaml") if path != KUSTOMIZATION)
KUBECTL = shutil.which("kubectl")
NAMESPACE = "p2pull"
# The oldest Kubernetes the manifests target, and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
# Objects of CRDs (no schema in kubernetes-validate): checked structurally below.
CRD_GROUPS = {"monitoring.coreos.com"}
NODE_IP = "198.18.0.7"  # what the kubelet puts in status.hostIP, for the tests
SUBPROCESS_DEADLINE = 30

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


ALL_DOCS = [(path, doc) for path in MANIFESTS for doc in load(path)]


FILE_DOCS = [doc for _, doc in ALL_DOCS]


def find(kind: str, name: str, *, docs: list[Doc] = FILE_DOCS) -> Doc:
    """The one ``kind/name`` object in ``docs`` (default: deploy/*.yaml as written)."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def containers_of(workload: Doc) -> list[Doc]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_spec(daemonset: str = "p2pull") -> Doc:
    spec: Doc = find("DaemonSet", daemonset)["spec"]["template"]["spec"]
    return spec


def container(name: str, *, daemonset: str = "p2pull", docs: list[Doc] = FILE_DOCS) -> Doc:
    workload = find("DaemonSet", daemonset, docs=docs)
    found = [c for c in containers_of(workload) if c["name"] == name]
    assert len(found) == 1, f"no container {name!r} in DaemonSet {daemonset}"
    return found[0]


def configmap(*, docs: list[Doc] = FILE_DOCS) -> dict[str, str]:
    data: dict[str, str] = find("ConfigMap", "p2pull-config", docs=docs)["data"]
    return data


def container_env(c: Doc, *, docs: list[Doc] = FILE_DOCS) -> dict[str, str]:
    """The environment the kubelet gives container ``c``: envFrom first, then env on top."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        assert source["configMapRef"]["name"] == "p2pull-config", source
        env.update(configmap(docs=docs))
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]
        if "configMapKeyRef" in ref:
            assert ref["configMapKeyRef"]["name"] == "p2pull-config", item
            env[item["name"]] = configmap(docs=docs)[ref["configMapKeyRef"]["key"]]
        elif ref.get("fieldRef", {}).get("fieldPath") == "status.hostIP":
            env[item["name"]] = NODE_IP
        else:
            raise AssertionError(f"unexpected env source in {c['name']}: {item}")
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """The kubelet's ``$(VAR)`` expansion of command and args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), arg) for arg in args]


def argv(c: Doc, *, docs: list[Doc] = FILE_DOCS) -> list[str]:
    """The container's command line after ``p2pull``, as the kubelet would run it."""
    assert c["command"] == ["p2pull"], f"{c['name']} should run the p2pull entry point"
    return expand(c.get("args", []), container_env(c, docs=docs))


def agent_config(*, docs: list[Doc] = FILE_DOCS) -> AgentConfig:
    agent = container("agent", docs=docs)
    args = argv(agent, docs=docs)
    assert args[0] == "agent"
    return load_agent_config(args[1:], env=container_env(agent, docs=docs))


def agent_env_names() -> set[str]:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser, {})
    return {
        env_name(flag)
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    }


def containerd_config_env_names() -> set[str]:
    subparsers = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    sub = subparsers.choices["containerd-config"]
    return {
        name for a in sub._actions for name in re.findall(r"\[env (P2PULL_\w+)\]", a.help or "")
    }


def port_number(c: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    assert named, f"{c['name']} has no port named {port!r}"
    return int(named[0])


# --- 1. the Kubernetes schema ----------------------------------------------------------------


def schema_cases() -> list[Any]:
    return [
        pytest.param(
            doc, version, id=f"{path.name}-{doc['kind']}-{doc['metadata']['name']}-{version}"
        )
        for path, doc in ALL_DOCS
        if doc["apiVersion"].split("/")[0] not in CRD_GROUPS
        for version in K8S_VERSIONS
    ]


@pytest.mark.parametrize(("doc", "version"), schema_cases())
def test_object_validates_against_the_kubernetes_schema(doc: Doc, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")


def test_files_apply_in_order_and_ship_no_secret() -> None:
    kinds = [d["kind"] for d in load(DEPLOY / "daemonset.yaml")]
    assert kinds[0] == "Namespace", "the namespace must exist before anything is created in it"
    assert kinds.index("ConfigMap") < kinds.index("DaemonSet")
    assert kinds.index("ResourceQuota") < kinds.index("DaemonSet")
    for path, doc in ALL_DOCS:
        assert doc["kind"] != "Secret", (
            f"{path.name}: the cluster secret is created by the operator"
        )
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, f"{path.name}: {doc['kind']}"
    # every volume refers to a Secret only by name; the pods wait for it
    secret = next(v for v in pod_spec()["volumes"] if v["name"] == "cluster-secret")["secret"]
    assert secret["secretName"] == "p2pull-cluster-secret" and not secret.get("optional", False)


# --- 2. what matters in operation ------------------------------------------------------------


def test_agent_runs_on_every_gpu_node_with_the_host_network() -> None:
    spec = pod_spec()
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet", "else the Service name won't resolve"
    assert spec["priorityClassName"] == "system-node-critical"
    tolerations = spec["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert {"operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    strategy = find("DaemonSet", "p2pull")["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == "10%"
    assert strategy["rollingUpdate"].get("maxSurge", 0) == 0, "two agents can't share host ports"
    quota = find("ResourceQuota", "p2pull-critical-pods")["spec"]["scopeSelector"]
    assert quota["matchExpressions"] == [
        {"scopeName": "PriorityClass", "operator": "In", "values": ["system-node-critical"]}
    ]


def test_configmap_loads_with_the_agent_config_loader() -> None:
    config = agent_config()  # raises ConfigError on any value the agent would refuse
    assert config.mirror_addr.host == "127.0.0.1", "a mirror on the host network must stay local"
    assert config.metrics_addr.host == "0.0.0.0", "the kubelet probes the node IP"
    assert config.advertise_addr == NODE_IP
    assert config.chunk_size == 1 << 20 and config.store_quota == 200 << 30
    assert config.log_format == "json"
    service = find("Service", "p2pull-peers")
    # the short name: the pod's DNS search list resolves it in the pod's namespace
    assert config.discovery == f"dns:{service['metadata']['name']}"
    assert pod_spec()["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_agent_env_is_spelled_like_its_flags() -> None:
    agent_names, cc_names = agent_env_names(), containerd_config_env_names()
    assert {"P2PULL_REGISTRY", "P2PULL_MIRROR", "P2PULL_DIR"} <= cc_names
    # Any P2PULL_* in the manifests (comments included) that no command reads is a typo.
    for path in MANIFESTS:
        unknown = set(re.findall(r"P2PULL_[A-Z0-9_]+", path.read_text())) - agent_names - cc_names
        assert not unknown, f"{path.name}: no p2pull command reads {sorted(unknown)}"
    agent = container("agent")
    explicit = {item["name"] for item in agent["env"]}
    assert explicit <= agent_names, sorted(explicit - agent_names)
    # ConfigMap keys the agent does not read are there for the init containers, which take them.
    taken = {
        item["valueFrom"]["configMapKeyRef"]["key"]
        for spec in (pod_spec(), pod_spec("p2pull-uninstall"))
        for c in spec.get("initContainers", [])
        for item in c.get("env", [])
        if "configMapKeyRef" in item.get("valueFrom", {})
    }
    assert set(configmap()) - agent_names <= taken & cc_names


def test_secret_and_data_dir_are_where_the_agent_looks() -> None:
    config, agent, spec = agent_config(), container("agent"), pod_spec()
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    assert config.cluster_secret_file is not None
    secret = volumes[mounts[str(config.cluster_secret_file.parent)]]["secret"]
    assert secret["items"] == [{"key": "secret", "path": config.cluster_secret_file.name}]
    assert (
        secret["defaultMode"] == 0o440
        and spec["securityContext"]["fsGroup"] == (agent["securityContext"]["runAsGroup"])
    ), "the agent's group must be able to read the secret file"
    data = volumes[mounts[str(config.data_dir)]]["hostPath"]
    assert data == {"path": str(config.data_dir), "type": "DirectoryOrCreate"}
    # fsGroup does not apply to hostPath: the data-dir init container hands it to the agent
    uid, gid = agent["securityContext"]["runAsUser"], agent["securityContext"]["runAsGroup"]
    chown = container("data-dir")
    assert f"chown {uid}:{gid} {config.data_dir}" in " ".join(chown["command"])
    assert [m["mountPath"] for m in chown["volumeMounts"]] == [str(config.data_dir)]


PORTS = ("mirror", "peer", "metrics")


def port_places(docs: list[Doc]) -> dict[str, tuple[str, int]]:
    """Every place in ``docs`` that names one of the agent's ports: which port, and its number.

    The agent's own addresses come through its config loader, the init container's mirror URL
    (written into hosts.toml) through the CLI's parser, as the kubelet would run them.
    """
    config, agent = agent_config(docs=docs), container("agent", docs=docs)
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert set(ports) == set(PORTS)
    init = container("containerd-config", docs=docs)
    mirror_url = urlsplit(build_parser().parse_args(argv(init, docs=docs)).mirror)
    template = find("DaemonSet", "p2pull", docs=docs)["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    (service_port,) = find("Service", "p2pull-peers", docs=docs)["spec"]["ports"]
    places = {
        "agent --mirror-addr": ("mirror", config.mirror_addr.port),
        "hosts.toml mirror URL": ("mirror", mirror_url.port),
        "agent --peer-addr": ("peer", config.peer_addr.port),
        "Service port": ("peer", service_port["port"]),
        "Service targetPort": ("peer", port_number(agent, service_port["targetPort"])),
        "agent --metrics-addr": ("metrics", config.metrics_addr.port),
        "prometheus.io/port": ("metrics", int(annotations["prometheus.io/port"])),
    }
    places.update({f"containerPort {name}": (name, ports[name]) for name in PORTS})
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        places[probe] = ("metrics", port_number(agent, agent[probe]["httpGet"]["port"]))
    return places


def assert_ports(places: dict[str, tuple[str, int]], expected: dict[str, int]) -> None:
    got = {place: number for place, (_, number) in places.items()}
    want = {place: expected[port] for place, (port, _) in places.items()}
    assert got == want, "places whose port differs from the agent's address"


def test_ports_probes_and_scrape_annotations_match_the_agent() -> None:
    config, agent = agent_config(), container("agent")
    ours = {"mirror": config.mirror_addr, "peer": config.peer_addr, "metrics": config.metrics_addr}
    assert_ports(port_places(FILE_DOCS), {name: addr.port for name, addr in ours.items()})
    for probe, path in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ]:
        assert agent[probe]["httpGet"]["path"] == path
    template = find("DaemonSet", "p2pull")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    service = find("Service", "p2pull-peers")["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    assert service["selector"].items() <= template["metadata"]["labels"].items()


def test_podmonitor_scrapes_the_agent_pods() -> None:
    monitor = find("PodMonitor", "p2pull")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = find("DaemonSet", "p2pull")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    agent = container("agent")
    assert port_number(agent, endpoint["port"]) == agent_config().metrics_addr.port
    assert endpoint["path"] == "/metrics"


def workload_containers() -> list[Any]:
    return [
        pytest.param(doc, c, id=f"{doc['metadata']['name']}-{c['name']}")
        for _, doc in ALL_DOCS
        if doc["kind"] == "DaemonSet"
        for c in containers_of(doc)
    ]


@pytest.mark.parametrize(("workload", "c"), workload_containers())
def test_every_container_is_locked_down(workload: Doc, c: Doc) -> None:
    spec = workload["spec"]["template"]["spec"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("hostPID") and not spec.get("hostIPC")
    ctx = c["securityContext"]
    assert ctx.get("privileged", False) is False
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert set(ctx["capabilities"].get("add", [])) <= {"CHOWN", "FOWNER"}
    assert "runAsUser" in ctx, "an explicit UID, not whatever the image says"
    if ctx["runAsUser"] == 0:
        # root only where root's files are written, and then with one host directory mounted
        assert len(c["volumeMounts"]) == 1, f"{c['name']} runs as root: mount only what it needs"
    else:
        assert ctx["runAsNonRoot"] is True
    assert "memory" in c["resources"]["limits"] and c["resources"]["requests"]
    if c["name"] == "containerd-config" or c["name"].startswith("restore"):
        assert "add" not in ctx["capabilities"], "writing root's certs.d needs no capability"


def test_agent_runs_as_the_image_user_and_tag() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ctx = container("agent")["securityContext"]
    user = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert user == [(str(ctx["runAsUser"]), str(ctx["runAsGroup"]))], "image USER != manifest"
    assert ctx["runAsUser"] != 0
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["python:3.11-slim"] * 2
    assert re.search(r'^ENTRYPOINT \["p2pull"\]$', dockerfile, re.M)
    assert re.search(r'^CMD \["agent"\]$', dockerfile, re.M)
    config = agent_config()
    (exposed,) = re.findall(r"^EXPOSE (.+)$", dockerfile, re.M)
    assert sorted(exposed.split()) == sorted(
        str(p) for p in (config.peer_addr.port, config.metrics_addr.port)
    )
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {
        c["image"]
        for _, doc in ALL_DOCS
        if doc["kind"] == "DaemonSet"
        for c in containers_of(doc)
        if "p2pull" in c["image"]
    }
    assert images == {f"ghcr.io/p2pull/p2pull:{version}"}


# --- 3. the containerd configuration the init containers write -------------------------------


def run_p2pull(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("P2PULL_")}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_DEADLINE,
    )


def with_dir(args: list[str], certs_dir: Path) -> list[str]:
    at = args.index("--dir")
    return [*args[: at + 1], str(certs_dir), *args[at + 2 :]]


def test_init_container_args_parse_with_the_cli() -> None:
    install = container("containerd-config")
    parsed = build_parser().parse_args(argv(install))
    assert parsed.command == "containerd-config" and not parsed.remove
    assert parsed.mirror == f"http://{agent_config().mirror_addr}"
    assert parsed.registry == [configmap()["P2PULL_REGISTRY"]]
    assert parsed.dir == "/host/etc/containerd/certs.d"
    mounts = {m["mountPath"]: m["name"] for m in install["volumeMounts"]}
    host = next(v for v in pod_spec()["volumes"] if v["name"] == mounts[parsed.dir])["hostPath"]
    assert host["path"] == "/etc/containerd/certs.d"
    undo = build_parser().parse_args(
        argv(container("restore-containerd-config", daemonset="p2pull-uninstall"))
    )
    assert undo.remove and undo.registry == parsed.registry and undo.dir == parsed.dir


def test_init_container_writes_hosts_toml_that_uninstall_restores(tmp_path: Path) -> None:
    install = container("containerd-config")
    uninstall = container("restore-containerd-config", daemonset="p2pull-uninstall")
    certs = tmp_path / "certs.d"
    registries = configmap()["P2PULL_REGISTRY"].split(",")
    mirror = f"http://{agent_config().mirror_addr}"
    # an operator's own file for one registry, which must survive install and uninstall
    operator_file = (
        '# ours\nserver = "https://mirror.corp.example"\n\n[host."https://mirror.corp.example"]\n'
    )
    (certs / "quay.io").mkdir(parents=True)
    (certs / "quay.io" / HOSTS_NAME).write_text(operator_file)

    done = run_p2pull(with_dir(argv(install), certs), container_env(install))
    assert done.returncode == 0, done.stderr
    for registry in registries:
        doc = tomllib.loads((certs / registry / HOSTS_NAME).read_text())
        hosts = list(doc["host"])
        assert hosts[0] == mirror, f"{registry}: the agent must be the first host"
        assert doc["host"][mirror]["capabilities"] == ["pull", "resolve"]
        if registry == "quay.io":
            assert doc["server"] == "https://mirror.corp.example"
            assert hosts[1:] == ["https://mirror.corp.example"]
            assert (certs / registry / BACKUP_NAME).read_text() == operator_file
        else:
            assert doc["server"] == default_server(registry)
    assert set(os.listdir(certs)) == set(registries)

    again = run_p2pull(with_dir(argv(install), certs), container_env(install))
    assert again.returncode == 0, "a restarted pod runs the init container again"

    undone = run_p2pull(with_dir(argv(uninstall), certs), container_env(uninstall))
    assert undone.returncode == 0, undone.stderr
    assert os.listdir(certs) == ["quay.io"]
    assert os.listdir(certs / "quay.io") == [HOSTS_NAME]
    assert (certs / "quay.io" / HOSTS_NAME).read_text() == operator_file


# --- 4. the kustomize package ----------------------------------------------------------------


# deploy/ uses components and replacements, and an overlay that changes a port relies on
# kustomize running components after generators (kustomize 5.1 and later).
KUSTOMIZE_MIN = (5, 1)


@functools.cache
def kustomize_missing() -> str | None:
    """Why ``kubectl kustomize`` cannot render deploy/ here, or None if it can."""
    if KUBECTL is None:
        return "kubectl not installed"
    done = subprocess.run(
        [KUBECTL, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_DEADLINE,
    )
    # kubectl before 1.24 does not print its kustomize (1.20, Debian 12's, has kustomize 2.0)
    info = json.loads(done.stdout) if done.returncode == 0 else {}
    kubectl_version = info.get("clientVersion", {}).get("gitVersion", "of unknown version")
    version = info.get("kustomizeVersion", "")
    numbers = re.match(r"v?(\d+)\.(\d+)", version)
    if numbers is None or (int(numbers[1]), int(numbers[2])) < KUSTOMIZE_MIN:
        return (
            f"{KUBECTL} (kubectl {kubectl_version}) has kustomize "
            f"{version or 'older than 4.5 (it prints no kustomizeVersion)'}; deploy/ needs "
            f"{'.'.join(map(str, KUSTOMIZE_MIN))} or later (kubectl 1.31 or later)"
        )
    return None


@pytest.fixture
def kubectl() -> str:
    reason = kustomize_missing()
    if reason is not None:
        pytest.skip(reason)
    assert KUBECTL is not None
    return KUBECTL


def kustomize(kubectl: str, directory: Path) -> list[Doc]:
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_DEADLINE,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_kustomize_sets_the_image_by_digest_and_the_namespace_in_one_place(
    kubectl: str, tmp_path: Path
) -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    (image,) = kustomization["images"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image["digest"]) and "newTag" not in image
    rendered = kustomize(kubectl, DEPLOY)
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in rendered}
    plain = {(d["kind"], d["metadata"]["name"]) for d in load(DEPLOY / "daemonset.yaml")}
    assert set(by_key) == plain, "the package is daemonset.yaml, nothing more or less"
    agent_images = {c["image"] for c in containers_of(by_key[("DaemonSet", "p2pull")])}
    assert agent_images == {f"{image['newName']}@{image['digest']}"}

    # another namespace, changed in the kustomization alone, reaches every object, and the
    # agent still finds the headless Service (by its short name, in its own namespace)
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    (copy / "kustomization.yaml").write_text(
        KUSTOMIZATION.read_text().replace("namespace: p2pull", "namespace: gpu-cache")
    )
    moved = kustomize(kubectl, copy)
    assert [d["metadata"]["name"] for d in moved if d["kind"] == "Namespace"] == ["gpu-cache"]
    assert {d["metadata"].get("namespace") for d in moved if d["kind"] != "Namespace"} == {
        "gpu-cache"
    }
    text = yaml.safe_dump_all(moved)
    assert "p2pull.svc" not in text and "namespace: p2pull" not in text


CHANGED = {"mirror": 7050, "peer": 7051, "metrics": 7395}  # none of them appears in deploy/


def with_changed_ports(configmap_text: str) -> str:
    """deploy/daemonset.yaml with the ConfigMap's three addresses on the CHANGED ports."""
    for key, port in [("MIRROR", "mirror"), ("PEER", "peer"), ("METRICS", "metrics")]:
        configmap_text, count = re.subn(
            rf'^(  P2PULL_{key}_ADDR: "[^:"]+:)\d+"$',
            rf'\g<1>{CHANGED[port]}"',
            configmap_text,
            flags=re.M,
        )
        assert count == 1, f"P2PULL_{key}_ADDR is not in daemonset.yaml's ConfigMap once"
    return configmap_text


OVERLAY = """\
resources: [../deploy]
namespace: gpu-cache
configMapGenerator:
  - name: p2pull-config
    namespace: p2pull
    behavior: merge
    literals:
      - P2PULL_MIRROR_ADDR=127.0.0.1:{mirror}
      - P2PULL_PEER_ADDR=0.0.0.0:{peer}
      - P2PULL_METRICS_ADDR=0.0.0.0:{metrics}
components: [../deploy/ports]
"""


@pytest.mark.parametrize("how", ["in-deploy", "overlay"])
def test_a_port_changed_in_the_configmap_reaches_every_place(
    kubectl: str, tmp_path: Path, how: str
) -> None:
    """docs/operations.md, "Ports": change an address in p2pull-config (in deploy/ itself, or
    merged in by an overlay that lists deploy/ports) and every place that names the port follows:
    the agent, the hosts.toml the init container writes, container ports, probes, the Service,
    the scrape annotation; no default port number is left anywhere in what is applied."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    if how == "in-deploy":
        daemonset = copy / "daemonset.yaml"
        daemonset.write_text(with_changed_ports(daemonset.read_text()))
        rendered = kustomize(kubectl, copy)
    else:
        (tmp_path / "overlay").mkdir()
        (tmp_path / "overlay" / "kustomization.yaml").write_text(OVERLAY.format(**CHANGED))
        rendered = kustomize(kubectl, tmp_path / "overlay")

    assert_ports(port_places(rendered), CHANGED)
    defaults = AgentConfig()
    text = yaml.safe_dump_all(rendered)
    for default in (defaults.mirror_addr, defaults.peer_addr, defaults.metrics_addr):
        assert not re.search(rf"\b{default.port}\b", text), f"{default.port} is still there"
    for doc in rendered:
        if doc["kind"] in ("DaemonSet", "Service"):  # ports still integers, and so on
            kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)
    # the init container, run as the kubelet would, points containerd at the changed port
    install = container("containerd-config", docs=rendered)
    certs = tmp_path / "certs.d"
    done = run_p2pull(
        with_dir(argv(install, docs=rendered), certs), container_env(install, docs=rendered)
    )
    assert done.returncode == 0, done.stderr
    doc = tomllib.loads((certs / "docker.io" / HOSTS_NAME).read_text())
    assert next(iter(doc["host"])) == f"http://127.0.0.1:{CHANGED['mirror']}"


def test_the_image_installs_pinned_hashed_dependencies_for_every_requirement() -> None:
    """deploy/requirements.lock pins every runtime dependency of pyproject.toml within its
    range, each with a hash, and the Dockerfile installs from it alone."""
    from packaging.requirements import Requirement

    lock = (DEPLOY / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9-]+)==(\S+) \\\n    --hash=sha256:[0-9a-f]{64}$", lock, re.M))
    assert len(pins) == len(re.findall(r"^[a-z0-9]", lock, re.M)), "every pin has one hash"
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not pinned in deploy/requirements.lock"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {text}"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile and "pip wheel --no-deps" in dockerfile
    assert "!deploy/requirements.lock" in (DEPLOY / "Dockerfile.dockerignore").read_text()
