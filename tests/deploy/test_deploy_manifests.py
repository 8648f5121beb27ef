"""The Kubernetes manifests: schema-valid for the Kubernetes versions we support, and
consistent with each other and with the worker they run."""

from __future__ import annotations

import ast
import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_files import (
    DEPLOY,
    HEALTH_PATH,
    KUBE,
    WORKER_PORT,
    all_objects,
    by_kind,
    containers,
    load_documents,
    manifest_files,
    system_binary,
)
from kubernetes_validate import utils as kv

# The oldest Kubernetes minor docs/deploy.md promises, and the newest one the installed
# kubernetes-validate carries schemas for (checked offline, from the package's data).
OLDEST_SUPPORTED = "1.29.0"
NEWEST_CARRIED = kv.all_versions()[-1]
# Kinds defined by CRDs: kubernetes-validate has no schema for them, so they get only
# the semantic checks below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

OBJECTS = all_objects()
WORKERS = [
    d for d in by_kind(OBJECTS, "Deployment") if d["metadata"]["name"].startswith("embed-worker")
]
BASE = KUBE / "kustomization.yaml"


def _id(path: Path) -> str:
    return str(path.relative_to(KUBE))


def _kustomize_files(kustomization: Path) -> list[Path]:
    data = yaml.safe_load(kustomization.read_text())
    return [kustomization.parent / r for r in data["resources"]]


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(match)


def _arg(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def _selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def test_versions_carried_by_validator() -> None:
    """The installed kubernetes-validate carries schemas for our oldest supported version and a
    current one."""
    versions = set(kv.all_versions())
    assert OLDEST_SUPPORTED in versions
    assert kv.Version(NEWEST_CARRIED) >= kv.Version("1.33.0")


@pytest.mark.parametrize("version", [OLDEST_SUPPORTED, NEWEST_CARRIED])
@pytest.mark.parametrize("path", manifest_files(), ids=_id)
def test_manifest_is_schema_valid_in_strict_mode(path: Path, version: str) -> None:
    """Every built-in object validates strictly (unknown fields rejected); only known CRD kinds lack
    a schema."""
    docs = load_documents(path)
    assert docs, f"{path} holds no objects"
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            with pytest.raises(kv.SchemaNotFoundError):
                kv.validate(doc, version, strict=True)
            continue
        kv.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    """Strict mode really rejects an unknown field, so the schema test above can fail."""
    deployment = copy.deepcopy(WORKERS[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, NEWEST_CARRIED, strict=True)


def test_kustomizations_list_existing_files() -> None:
    """Each kustomization names files that exist, and the base one applies every worker-side
    manifest but the HPA variant."""
    for kustomization in KUBE.rglob("kustomization.yaml"):
        for file in _kustomize_files(kustomization):
            assert file.is_file(), f"{kustomization} lists missing {file}"
    listed = {p.name for p in _kustomize_files(BASE)}
    top_level = {p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert top_level - listed == {"hpa-queue-depth.yaml"}


@pytest.mark.parametrize("variant", ["hpa.yaml", "hpa-queue-depth.yaml"])
def test_each_worker_deployment_has_exactly_one_autoscaler(variant: str) -> None:
    """With either HPA variant applied, no Deployment is scaled by two HPAs and every HPA targets a
    real Deployment with CPU requests."""
    files = [p for p in _kustomize_files(BASE) if p.name != "hpa.yaml"] + [KUBE / variant]
    objects = all_objects(files)
    deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
    targets = [h["spec"]["scaleTargetRef"] for h in by_kind(objects, "HorizontalPodAutoscaler")]
    names = [t["name"] for t in targets]
    assert len(names) == len(set(names)), f"two HPAs on one Deployment: {names}"
    assert "embed-worker-cpu" in names
    for target in targets:
        assert target["kind"] == "Deployment"
        assert target["apiVersion"] == "apps/v1"
        deployment = deployments[target["name"]]
        for container in containers(deployment):
            # Utilization targets divide by the request: without one the HPA does nothing.
            assert "cpu" in container["resources"]["requests"]
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_deployment_selectors_match_their_pod_labels() -> None:
    """Every Deployment's selector matches its own pod template and no other Deployment's pods."""
    deployments = by_kind(OBJECTS, "Deployment")
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert _selected(selector, _pod_labels(deployment))
        others = [d for d in deployments if d is not deployment]
        assert not any(_selected(selector, _pod_labels(d)) for d in others)


def test_services_select_exactly_one_deployment_on_its_port() -> None:
    """Each Service selects the pods of exactly one Deployment, and its targetPort is a port that
    pod listens on."""
    deployments = by_kind(OBJECTS, "Deployment")
    for service in by_kind(OBJECTS, "Service"):
        selector = service["spec"]["selector"]
        matched = [d for d in deployments if _selected(selector, _pod_labels(d))]
        assert len(matched) == 1, (
            f"{service['metadata']['name']} selects {len(matched)} Deployments"
        )
        (container,) = list(containers(matched[0]))
        for port in service["spec"]["ports"]:
            assert _port_number(container, port["targetPort"]) in {
                p["containerPort"] for p in container["ports"]
            }


def test_worker_services_are_headless_and_publish_ready_pods_only() -> None:
    """Worker Services are headless (DNS returns pod addresses) and publish only ready pods, so
    readiness drives discovery."""
    workers = [
        s for s in by_kind(OBJECTS, "Service") if s["metadata"]["name"].startswith("embed-worker")
    ]
    assert {s["metadata"]["name"] for s in workers} == {"embed-worker-gpu", "embed-worker-cpu"}
    for service in workers:
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"].get("publishNotReadyAddresses", False) is False
        # A named port gives SRV records (_http._tcp.<service>) for clients that want them.
        assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
        assert service["spec"]["ports"][0]["port"] == WORKER_PORT


@pytest.mark.parametrize("deployment", WORKERS, ids=lambda d: d["metadata"]["name"])
def test_worker_args_match_the_cli_contract(deployment: dict[str, Any]) -> None:
    """Workers listen on all interfaces on the CLI's default port, which is the container port, with
    a device matching their tier."""
    (container,) = list(containers(deployment))
    args = container["args"]
    assert _arg(args, "--host") == "0.0.0.0"
    assert int(_arg(args, "--port")) == WORKER_PORT
    assert [p["containerPort"] for p in container["ports"]] == [WORKER_PORT]
    tier = _pod_labels(deployment)["embedbalance/tier"]
    assert _arg(args, "--device") == {"gpu": "cuda", "cpu": "cpu"}[tier]
    assert _arg(args, "--dtype") in {"float32", "bfloat16", "float16"}
    threads = int(_arg(args, "--torch-threads"))
    assert threads <= float(container["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("deployment", WORKERS, ids=lambda d: d["metadata"]["name"])
def test_worker_probes_hit_health_on_the_worker_port(deployment: dict[str, Any]) -> None:
    """Startup, readiness and liveness probes all GET /health on the worker's port."""
    (container,) = list(containers(deployment))
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]["httpGet"]
        assert probe["path"] == HEALTH_PATH, kind
        assert _port_number(container, probe["port"]) == WORKER_PORT, kind


@pytest.mark.parametrize("deployment", WORKERS, ids=lambda d: d["metadata"]["name"])
def test_termination_covers_the_prestop_sleep_and_the_drain(deployment: dict[str, Any]) -> None:
    """The grace period exceeds the preStop sleep plus the worker's drain timeout, and liveness
    never kills a draining pod."""
    from embedbalance_worker.config import WorkerConfig

    pod = deployment["spec"]["template"]["spec"]
    (container,) = list(containers(deployment))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    grace = pod["terminationGracePeriodSeconds"]
    drain = WorkerConfig().drain_timeout_s
    # CoreDNS publishes a 5 s TTL and clients refresh within it: the sleep must outlast
    # that so no client still sends to the pod once it stops accepting.
    assert pre_stop >= 10
    assert grace >= pre_stop + drain + 5
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= grace
    assert "readOnlyRootFilesystem" in container["securityContext"]


@pytest.mark.parametrize(
    "deployment", by_kind(OBJECTS, "Deployment"), ids=lambda d: d["metadata"]["name"]
)
def test_every_container_sets_requests_and_limits(deployment: dict[str, Any]) -> None:
    """Every container requests and limits CPU and memory, with limits at least the requests."""
    for container in containers(deployment):
        resources = container["resources"]
        for key in ("cpu", "memory"):
            assert key in resources["requests"]
            assert key in resources["limits"]
        assert _cpu(resources["limits"]["cpu"]) >= _cpu(resources["requests"]["cpu"])


def _cpu(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def test_gpu_workers_request_and_tolerate_gpus() -> None:
    """GPU workers limit nvidia.com/gpu, select GPU nodes and tolerate their taint; CPU workers do
    neither."""
    gpu = next(d for d in WORKERS if _pod_labels(d)["embedbalance/tier"] == "gpu")
    cpu = next(d for d in WORKERS if _pod_labels(d)["embedbalance/tier"] == "cpu")
    gpu_pod, cpu_pod = gpu["spec"]["template"]["spec"], cpu["spec"]["template"]["spec"]
    (gpu_container,) = gpu_pod["containers"]
    assert int(gpu_container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert any(k.startswith("nvidia.com/") for k in gpu_pod["nodeSelector"])
    assert any(
        t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in gpu_pod["tolerations"]
    )
    (cpu_container,) = cpu_pod["containers"]
    assert "nvidia.com/gpu" not in cpu_container["resources"]["limits"]
    assert "tolerations" not in cpu_pod
    # Never take a ready GPU pod away before its replacement is ready.
    assert gpu["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_disruption_budgets_cover_each_tier_and_let_drains_progress() -> None:
    """Each worker tier has one PDB selecting exactly its pods, which always permits at least one
    eviction."""
    budgets = by_kind(OBJECTS, "PodDisruptionBudget")
    assert len(budgets) == len(WORKERS)
    for deployment in WORKERS:
        labels = _pod_labels(deployment)
        (budget,) = [b for b in budgets if _selected(b["spec"]["selector"]["matchLabels"], labels)]
        others = [d for d in WORKERS if d is not deployment]
        assert not any(
            _selected(budget["spec"]["selector"]["matchLabels"], _pod_labels(d)) for d in others
        )
        assert (
            budget["spec"].get("maxUnavailable", 0) >= 1
            or budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
        )


def test_servicemonitor_scrapes_the_worker_services() -> None:
    """With no schema for the CRD, check by hand that the ServiceMonitor selects both worker
    Services on a named port at /metrics."""
    (monitor,) = by_kind(OBJECTS, "ServiceMonitor")
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    selected = [
        s
        for s in by_kind(OBJECTS, "Service")
        if _selected(spec["selector"]["matchLabels"], s["metadata"]["labels"])
        and s["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
    ]
    assert {s["metadata"]["name"] for s in selected} == {"embed-worker-gpu", "embed-worker-cpu"}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {
            "port", "path", "interval", "scrapeTimeout", "relabelings", "authorization",
        }  # fmt: skip
        assert endpoint["path"] == "/metrics"
        for service in selected:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        for relabel in endpoint.get("relabelings", []):
            for source in relabel["sourceLabels"]:
                # Prometheus turns the pod label embedbalance/tier into this meta label.
                assert re.fullmatch(r"__meta_kubernetes_pod_label_[a-z0-9_]+", source)


@pytest.mark.parametrize(
    "deployment", by_kind(OBJECTS, "Deployment"), ids=lambda d: d["metadata"]["name"]
)
def test_scrape_annotations_point_at_a_container_port(deployment: dict[str, Any]) -> None:
    """Annotation-based scraping targets /metrics on a port the pod actually listens on."""
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    ports = {p["containerPort"] for c in containers(deployment) for p in c["ports"]}
    assert int(annotations["prometheus.io/port"]) in ports


def _adapter_rules() -> list[dict[str, Any]]:
    (config_map,) = by_kind(all_objects([KUBE / "hpa-queue-depth.yaml"]), "ConfigMap")
    return list(yaml.safe_load(config_map["data"]["config.yaml"])["rules"])


def test_adapter_rule_serves_the_metric_the_hpas_ask_for() -> None:
    """The Prometheus adapter rule exposes a real worker metric under the name the queue-depth HPAs
    request."""
    from embedbalance_worker.metrics import METRIC_NAMES as WORKER_METRICS

    rules = _adapter_rules()
    served = {r["name"]["as"] for r in rules}
    for rule in rules:
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"])
        assert series
        assert series.group(0) in WORKER_METRICS
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert re.fullmatch(rule["name"]["matches"], series.group(0))
    hpas = by_kind(all_objects([KUBE / "hpa-queue-depth.yaml"]), "HorizontalPodAutoscaler")
    asked = {
        m["pods"]["metric"]["name"]
        for h in hpas
        for m in h["spec"]["metrics"]
        if m["type"] == "Pods"
    }
    assert asked
    assert asked <= served
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == {
        d["metadata"]["name"] for d in WORKERS
    }


@pytest.mark.system
def test_adapter_metrics_query_is_valid_promql(tmp_path: Path) -> None:
    """The adapter's metricsQuery, with its template fields filled the way the adapter fills them,
    parses as PromQL."""
    promtool = system_binary("promtool")
    exprs = []
    for rule in _adapter_rules():
        expr = rule["metricsQuery"]
        expr = expr.replace("<<.Series>>", rule["name"]["as"])
        expr = expr.replace("<<.LabelMatchers>>", 'namespace="embeddings",pod=~"embed-worker-.*"')
        expr = expr.replace("<<.GroupBy>>", "namespace, pod")
        assert "<<" not in expr
        exprs.append(expr)
    rules = {
        "groups": [
            {
                "name": "adapter",
                "rules": [{"record": f"check:{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dockerfile(name: str) -> list[tuple[str, str]]:
    """(instruction, argument) pairs, with continuation lines joined and comments dropped."""
    text = (DEPLOY / "docker" / name).read_text()
    text = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


@pytest.mark.parametrize(("name", "tier"), [("Dockerfile.cpu", "cpu"), ("Dockerfile.cuda", "gpu")])
def test_dockerfile_runs_the_worker_as_the_pod_expects(name: str, tier: str) -> None:
    """The image runs embedbalance-worker as the non-root UID the pod declares, on the CLI port,
    listening on all interfaces."""
    pairs = _dockerfile(name)
    last = {instruction: arg for instruction, arg in pairs}
    assert ast.literal_eval(last["ENTRYPOINT"]) == ["embedbalance-worker"]
    cmd = ast.literal_eval(last["CMD"])
    assert _arg(cmd, "--host") == "0.0.0.0"
    assert int(_arg(cmd, "--port")) == WORKER_PORT == int(last["EXPOSE"])
    assert last["STOPSIGNAL"] == "SIGTERM"
    # Started without --model-id, the image serves the default model: it needs the extra.
    assert "--model-id" not in cmd
    assert any(i == "RUN" and "/src[worker,model]" in a for i, a in pairs)
    assert any(i == "RUN" and ("download.pytorch.org" in a or "TORCH_INDEX" in a) for i, a in pairs)
    (deployment,) = [d for d in WORKERS if _pod_labels(d)["embedbalance/tier"] == tier]
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert last["USER"] == f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}"
    (container,) = list(containers(deployment))
    assert container["image"].endswith("-" + name.rsplit(".", 1)[1])
    ignore = DEPLOY / "docker" / f"{name}.dockerignore"
    assert ignore.is_file(), (
        "BuildKit reads <Dockerfile>.dockerignore; without it .venv goes into the context"
    )


CLIENT = KUBE / "client-example"


def _env_names_read(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            names.add(ast.literal_eval(node.slice))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.environ.get":
            names.add(ast.literal_eval(node.args[0]))
    return names


def test_client_example_config_matches_the_app_and_the_services() -> None:
    """The sample client's ConfigMap sets exactly the variables app.py reads, naming the worker
    Services' FQDNs and port."""
    source = (CLIENT / "app.py").read_text()
    compile(source, "app.py", "exec")
    objects = all_objects([CLIENT / "fastapi-client.yaml"])
    (config_map,) = by_kind(objects, "ConfigMap")
    assert set(config_map["data"]) == _env_names_read(source)
    services = {
        s["metadata"]["name"]: s["metadata"]["namespace"] for s in by_kind(OBJECTS, "Service")
    }
    for key, tier in (("EMBED_GPU_SERVICE", "gpu"), ("EMBED_CPU_SERVICE", "cpu")):
        name = f"embed-worker-{tier}"
        assert config_map["data"][key] == f"{name}.{services[name]}.svc.cluster.local."
    assert int(config_map["data"]["EMBED_WORKER_PORT"]) == WORKER_PORT
    (deployment,) = by_kind(objects, "Deployment")
    (container,) = list(containers(deployment))
    assert container["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]


def test_client_example_app_builds_tiered_dns_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """Imported with the ConfigMap's values, the sample app discovers the GPU Service as tier 0 and
    the CPU one as tier 1."""
    import importlib.util

    from embedbalance.dns import DnsDiscovery

    (config_map,) = by_kind(all_objects([CLIENT / "fastapi-client.yaml"]), "ConfigMap")
    for key, value in config_map["data"].items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("embed_client_app", CLIENT / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    discovery = module.make_discovery()
    assert isinstance(discovery, DnsDiscovery)
    assert [(t.name, t.port, t.tier) for t in discovery.targets] == [
        (config_map["data"]["EMBED_GPU_SERVICE"], WORKER_PORT, 0),
        (config_map["data"]["EMBED_CPU_SERVICE"], WORKER_PORT, 1),
    ]
    assert discovery.max_ttl == float(config_map["data"]["EMBED_DNS_MAX_TTL"])
