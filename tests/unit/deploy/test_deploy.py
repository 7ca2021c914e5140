"""deploy/: the image definition, the lock, and the KubeRay manifests stay consistent with the project.

Core Kubernetes objects are validated against the Kubernetes JSON schemas of `kubernetes-validate`
(the `test` extra). KubeRay's objects (RayJob, RayCronJob, and the RayJob template in the nightly
ConfigMap) are validated against deploy/schemas/kuberay-<version>.json, our transcription of the CRDs
of the KubeRay releases the manifests claim, with the pod templates inside them checked against the
strict Kubernetes schemas of the release that KubeRay is built with: what `kubectl apply
--validate=strict` checks. A few semantic rules the CRDs cannot express are checked by hand.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata as md
import importlib.resources
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines.cli import build_parser, command_flags
from pipelines.config import build
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.jobs.train.config import TrainJobConfig

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
SCHEMAS = DEPLOY / "schemas"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
K8S_VERSION = "1.30.0"  # CronJob.spec.timeZone is GA since 1.27
SECRET_NAME = "harmony-s3"
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The KubeRay releases each kind of object must be valid on (README: RayJobs need >= 1.2, RayCronJob >= 1.6).
KUBERAY_CLAIMS = {"RayJob": ("1.2", "1.6"), "RayCluster": ("1.2", "1.6"), "RayCronJob": ("1.6",)}


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in MANIFESTS for d in docs(p)]


def of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in all_docs() if d["kind"] == kind]


def rayjob_specs() -> list[tuple[str, dict]]:
    """Every RayJob spec shipped: the RayJobs, the nightly template, the RayCronJob's jobTemplate."""
    out = [(p.name, d["spec"]) for p, d in of_kind("RayJob")]
    out += [(f"{p.name}:jobTemplate", d["spec"]["jobTemplate"]) for p, d in of_kind("RayCronJob")]
    for p, d in of_kind("ConfigMap"):
        for key, text in d.get("data", {}).items():
            if key.endswith((".yaml", ".yml")):
                inner = yaml.safe_load(text)
                if isinstance(inner, dict) and inner.get("kind") == "RayJob":
                    out.append((f"{p.name}:{key}", inner["spec"]))
    return out


def pod_specs() -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod the manifests can create."""
    out = []
    for where, spec in rayjob_specs():
        cluster = spec["rayClusterSpec"]
        out.append((f"{where}:head", cluster["headGroupSpec"]["template"]["spec"]))
        out += [(f"{where}:{g['groupName']}", g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    for p, d in of_kind("CronJob"):
        out.append((f"{p.name}:cronjob", d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return out


def job_config_text() -> str:
    (cm,) = [d for _, d in of_kind("ConfigMap") if d["metadata"]["name"] == "harmony-job"]
    return cm["data"]["job.yaml"]


# ---------------------------------------------------------------------------------------------
# manifests parse, and the job config is the project's own


def test_every_manifest_parses_and_names_its_objects():
    assert {p.name for p in MANIFESTS} >= {"configmap.yaml", "secret.example.yaml", "rayjob.yaml",
                                           "rayjob-autoscaling.yaml", "nightly-cronjob.yaml", "raycronjob.yaml"}
    for path in MANIFESTS:
        ds = docs(path)
        assert ds, path
        for d in ds:
            assert d.get("apiVersion") and d.get("kind"), path
            meta = d["metadata"]
            assert meta.get("name") or meta.get("generateName"), path


def test_configmap_job_yaml_loads_through_the_job_config(tmp_path):
    (tmp_path / "job.yaml").write_text(job_config_text())
    cfg = build(HarmonizeJobConfig, tmp_path / "job.yaml", {})
    assert cfg.manifest.startswith("s3://") and cfg.output.startswith("s3://")
    assert cfg.model.engine == "diffharmony" and cfg.model.model.startswith("s3://")
    assert cfg.pools.model.num_gpus == 1
    # credentials are never part of the job config
    assert not {"key", "secret", "token", "password"} & {k.lower() for k in cfg.storage_options}


@pytest.mark.parametrize("where,spec", rayjob_specs(), ids=[w for w, _ in rayjob_specs()])
def test_entrypoint_is_a_valid_harmony_command(where, spec, tmp_path):
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "harmony"
    args = build_parser().parse_args(argv[1:])  # SystemExit on an unknown flag
    if args.command == "train":  # all in flags: the training RayJob needs no ConfigMap
        cfg = build(TrainJobConfig, None, command_flags(args))
        assert cfg.gpus_per_worker >= 1 and cfg.output.startswith("s3://") and cfg.precision != "fp32"
        gpu = [g for g in spec["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
        assert cfg.workers * cfg.gpus_per_worker <= gpu["replicas"] * _gpus(gpu["template"]["spec"]["containers"][0], "limits")
        return
    assert args.command == "harmonize" and args.config == "/etc/harmony/job.yaml"
    # the config it names is the ConfigMap, mounted where the driver runs (the head pod)
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for c in head["containers"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes[mounts["/etc/harmony"]]["configMap"]["name"] == "harmony-job"
    # flags + YAML make a valid configuration, flags winning
    (tmp_path / "job.yaml").write_text(job_config_text())
    cfg = build(HarmonizeJobConfig, tmp_path / "job.yaml", command_flags(args))
    if args.actors:
        lo, _, hi = args.actors.partition(",")
        assert (cfg.pools.model.min_workers, cfg.pools.model.max_workers) == (int(lo), int(hi or lo))


# ---------------------------------------------------------------------------------------------
# KubeRay objects against the CRDs of the claimed releases (what `kubectl apply --validate=strict` checks)


def kuberay_objects() -> list[tuple[str, dict]]:
    """(where, object) of every KubeRay object shipped, the RayJob template inside a ConfigMap included."""
    out = [(p.name, d) for p, d in all_docs() if d["apiVersion"].startswith("ray.io/")]
    for p, d in of_kind("ConfigMap"):
        for key, text in d.get("data", {}).items():
            if key.endswith((".yaml", ".yml")):
                inner = yaml.safe_load(text)
                if isinstance(inner, dict) and str(inner.get("apiVersion", "")).startswith("ray.io/"):
                    out.append((f"{p.name}:{key}", inner))
    return out


@functools.lru_cache(maxsize=None)
def _kuberay_validator(version: str):
    jsonschema = pytest.importorskip("jsonschema")
    kv = pytest.importorskip("kubernetes_validate")
    from referencing import Registry, Resource

    schema = json.loads((SCHEMAS / f"kuberay-{version}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["x-kuberay-version"] == version
    # the strict Kubernetes definitions (pod spec, env, resources, ...) of the release KubeRay is built with
    k8s = importlib.resources.files(kv) / "kubernetes-json-schema" / f"v{schema['x-kubernetes-version']}.0-local-strict"
    definitions = json.loads((k8s / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _field_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "<root>"


def kuberay_errors(obj: dict, version: str) -> list[str]:
    """'field.path: problem' for each way `obj` breaks KubeRay `version`'s CRD; unknown fields by name."""
    out = []
    for e in _kuberay_validator(version).iter_errors(obj):
        if e.validator == "additionalProperties" and e.validator_value is False:
            known = e.schema.get("properties", {})
            out += [f"{_field_path([*e.absolute_path, k])}: unknown field" for k in e.instance if k not in known]
        else:
            out.append(f"{_field_path(e.absolute_path)}: {e.message}")
    return sorted(out)


def _kuberay_cases() -> list[tuple[str, str]]:
    return [(where, v) for where, d in kuberay_objects() for v in KUBERAY_CLAIMS[d["kind"]]]


def test_every_kuberay_object_is_validated():
    assert {w for w, _ in kuberay_objects()} == {"rayjob.yaml", "rayjob-autoscaling.yaml", "raycronjob.yaml", "rayjob-train.yaml",
                                                  "nightly-cronjob.yaml:rayjob.yaml"}
    assert {p.stem.removeprefix("kuberay-") for p in SCHEMAS.glob("kuberay-*.json")} == \
        {v for vs in KUBERAY_CLAIMS.values() for v in vs}


@pytest.mark.parametrize("where,version", _kuberay_cases(), ids=[f"{w}@{v}" for w, v in _kuberay_cases()])
def test_kuberay_objects_validate_against_the_crds(where, version):
    errors = kuberay_errors(dict(kuberay_objects())[where], version)
    assert not errors, f"{where} on KubeRay {version}:\n" + "\n".join(errors)


def _open_levels(node, path="") -> list[str]:
    """Paths of object levels in a schema that would let unknown fields through."""
    if isinstance(node, list):
        return [p for i, n in enumerate(node) for p in _open_levels(n, f"{path}/{i}")]
    if not isinstance(node, dict):
        return []
    open_ = [path] if "properties" in node and node.get("additionalProperties") is not False else []
    return open_ + [p for k, n in node.items() if k != "properties" for p in _open_levels(n, f"{path}/{k}")] + \
        [p for k, n in node.get("properties", {}).items() for p in _open_levels(n, f"{path}/properties/{k}")]


@pytest.mark.parametrize("version", sorted({v for vs in KUBERAY_CLAIMS.values() for v in vs}))
def test_kuberay_schemas_close_every_object(version):
    schema = json.loads((SCHEMAS / f"kuberay-{version}.json").read_text())
    assert _open_levels(schema["$defs"]) == []
    assert "--validate=strict" in " ".join(schema["x-header"])


def _at(obj, path: str):
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        obj = obj[int(part[1:-1])] if part.startswith("[") else obj[part]
    return obj


KEEP = object()
NIGHTLY = "nightly-cronjob.yaml:rayjob.yaml"
GPU_POD = "spec.rayClusterSpec.workerGroupSpecs[1].template.spec"
HEAD_CONTAINER = "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0]"
# (where, parent, key replaced (None: a new key), key planted, value (KEEP: the replaced key's), versions
# that reject it (None: every claimed one), the path the error names (None: parent.key planted))
MISTAKES = {
    "runtimeEnvYaml": ("rayjob.yaml", "spec", None, "runtimeEnvYaml", "pip: [requests]", None, None),
    "ttlSecondAfterFinished": ("rayjob.yaml", "spec", "ttlSecondsAfterFinished", "ttlSecondAfterFinished",
                               KEEP, None, None),
    "backofLimit": (NIGHTLY, "spec", "backoffLimit", "backofLimit", KEEP, None, None),
    "enableInTreeAutoscalling": ("rayjob-autoscaling.yaml", "spec.rayClusterSpec", "enableInTreeAutoscaling",
                                 "enableInTreeAutoscalling", KEEP, None, None),
    "upscalingMode-enum": ("rayjob-autoscaling.yaml", "spec.rayClusterSpec.autoscalerOptions", "upscalingMode",
                           "upscalingMode", "Fast", None, None),
    "head-replicas": ("rayjob.yaml", "spec.rayClusterSpec.headGroupSpec", None, "replicas", 1, None, None),
    "worker-minReplica": (NIGHTLY, "spec.rayClusterSpec.workerGroupSpecs[0]", "minReplicas", "minReplica",
                          KEEP, None, None),
    "rayStartParams-not-string": ("rayjob.yaml", "spec.rayClusterSpec.headGroupSpec.rayStartParams", "num-cpus",
                                  "num-cpus", 0, None, None),
    "pod-nodeSelectr": ("rayjob.yaml", GPU_POD, None, "nodeSelectr", {"nvidia.com/gpu.present": "true"},
                        None, None),
    "pod-nodeSelectr-raycronjob": ("raycronjob.yaml", GPU_POD.replace("spec.", "spec.jobTemplate.", 1), None,
                                   "nodeSelectr", {"nvidia.com/gpu.present": "true"}, None, None),
    "container-resource": (NIGHTLY, HEAD_CONTAINER, "resources", "resource", KEEP, None, None),
    "env-valuefrom": ("rayjob-autoscaling.yaml", f"{HEAD_CONTAINER}.env[0]", "valueFrom", "valuefrom", KEEP,
                      None, None),
    "template-metadata-generateName": ("rayjob.yaml", "spec.rayClusterSpec.workerGroupSpecs[0].template", None,
                                       "metadata", {"generateName": "cpu-"}, None,
                                       "spec.rayClusterSpec.workerGroupSpecs[0].template.metadata.generateName"),
    "1.6-field-on-1.2": ("rayjob.yaml", "spec", None, "deletionStrategy",
                         {"onSuccess": {"policy": "DeleteCluster"}, "onFailure": {"policy": "DeleteNone"}},
                         ("1.2",), None),
    "raycronjob-timeZone": ("raycronjob.yaml", "spec", None, "timeZone", "Etc/UTC", None, None),
    "raycronjob-concurrencyPolicy": ("raycronjob.yaml", "spec", None, "concurrencyPolicy", "Forbid", None, None),
    "raycronjob-startingDeadlineSeconds": ("raycronjob.yaml", "spec", None, "startingDeadlineSeconds", 3600,
                                           None, None),
    "raycronjob-jobTemplate.spec": ("raycronjob.yaml", "spec", "jobTemplate", "jobTemplate",
                                    lambda old: {"spec": old}, None, "spec.jobTemplate.spec"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_kuberay_validation_names_a_planted_mistake(mistake):
    where, parent, old, new, value, versions, expect = MISTAKES[mistake]
    obj = copy.deepcopy(dict(kuberay_objects())[where])
    at = _at(obj, parent)
    if old is not None:
        kept = at.pop(old)
        value = kept if value is KEEP else value(kept) if callable(value) else value
    at[new] = value
    expect = expect or f"{parent}.{new}"
    for version in versions or KUBERAY_CLAIMS[obj["kind"]]:
        errors = kuberay_errors(obj, version)
        assert any(e.startswith(f"{expect}:") for e in errors), (version, errors)


# ---------------------------------------------------------------------------------------------
# KubeRay objects: what the CRDs cannot say, by hand


def _check_container(c: dict, where: str):
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", c["name"]), where
    assert c["image"], where
    res = c.get("resources", {})
    assert res.get("limits") and res.get("requests"), f"{where}: set requests and limits"


@pytest.mark.parametrize("where,spec", rayjob_specs(), ids=[w for w, _ in rayjob_specs()])
def test_rayjob_spec_required_fields(where, spec):
    import ray

    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec.get("backoffLimit", 0), int)
    cluster = spec["rayClusterSpec"]
    assert str(cluster["rayVersion"]) == ray.__version__
    head = cluster["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams is map[string]string"
    for c in head["template"]["spec"]["containers"]:
        _check_container(c, f"{where}:head")
    groups = cluster["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], (where, g["groupName"])
        for c in g["template"]["spec"]["containers"]:
            _check_container(c, f"{where}:{g['groupName']}")
    autoscaling = cluster.get("enableInTreeAutoscaling", False)
    if autoscaling:
        assert any(g["minReplicas"] < g["maxReplicas"] for g in groups)
    else:  # a fixed cluster: nothing would ever add the missing pods
        assert all(g["minReplicas"] == g["replicas"] == g["maxReplicas"] for g in groups)


def _gpus(c: dict, section: str) -> int:
    return int(c.get("resources", {}).get(section, {}).get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("where,spec", rayjob_specs(), ids=[w for w, _ in rayjob_specs()])
def test_gpu_group_asks_for_gpus_and_the_others_do_not(where, spec):
    cluster = spec["rayClusterSpec"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    for c in groups["gpu"]["template"]["spec"]["containers"]:
        assert _gpus(c, "limits") >= 1 and c["image"].endswith("-gpu")
    for c in groups["cpu"]["template"]["spec"]["containers"] + cluster["headGroupSpec"]["template"]["spec"]["containers"]:
        assert _gpus(c, "limits") == 0 and _gpus(c, "requests") == 0 and c["image"].endswith("-cpu")
    tolerations = groups["gpu"]["template"]["spec"].get("tolerations", [])
    assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)


def test_fixed_cluster_fits_the_model_pool(tmp_path):
    (tmp_path / "job.yaml").write_text(job_config_text())
    cfg = build(HarmonizeJobConfig, tmp_path / "job.yaml", {})
    (rayjob,) = [d for p, d in of_kind("RayJob") if p.name == "rayjob.yaml"]
    gpu = [g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    (c,) = gpu["template"]["spec"]["containers"]
    gpus = gpu["replicas"] * _gpus(c, "limits")
    cpus_per_pod = float(c["resources"]["limits"]["cpu"])
    m = cfg.pools.model
    assert m.max_workers * m.num_gpus <= gpus
    assert m.num_cpus <= cpus_per_pod * _gpus(c, "limits") / m.num_gpus


def test_autoscaling_variant():
    (d,) = [d for p, d in of_kind("RayJob") if p.name == "rayjob-autoscaling.yaml"]
    cluster = d["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    gpu = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    args = build_parser().parse_args(shlex.split(d["spec"]["entrypoint"])[1:])
    lo, _, hi = args.actors.partition(",")
    assert gpu["minReplicas"] <= int(lo) and int(hi) <= gpu["maxReplicas"]


def test_scheduled_variants_run_the_same_job():
    (bulk,) = [d for p, d in of_kind("RayJob") if p.name == "rayjob.yaml"]
    specs = dict(rayjob_specs())
    (cron,) = [d for _, d in of_kind("CronJob")]
    late_start = cron["spec"]["startingDeadlineSeconds"]
    for where in ("raycronjob.yaml:jobTemplate", "nightly-cronjob.yaml:rayjob.yaml"):
        spec = dict(specs[where])
        deadline = spec.pop("activeDeadlineSeconds")
        assert 0 < deadline < 24 * 3600
        # KubeRay restarts the deadline with each attempt: a night's run lasts up to (backoffLimit + 1)
        # deadlines; it must end before the next night's starts, even after a start up to
        # startingDeadlineSeconds late and an hour for the cluster teardowns between attempts.
        assert deadline * (spec["backoffLimit"] + 1) <= 24 * 3600 - late_start - 3600, where
        expected = {k: v for k, v in bulk["spec"].items() if k != "activeDeadlineSeconds"}
        assert spec == expected, where
    (rcj,) = [d for _, d in of_kind("RayCronJob")]
    for schedule in (rcj["spec"]["schedule"], cron["spec"]["schedule"]):
        assert len(schedule.split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    # the CronJob creates RayJobs with its own ServiceAccount, and the Role allows only that
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (binding,) = [d for _, d in of_kind("RoleBinding")]
    (role,) = [d for _, d in of_kind("Role")]
    assert pod["serviceAccountName"] == binding["subjects"][0]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
        assert "*" not in rule["verbs"] and "create" in rule["verbs"]
    (cmd,) = pod["containers"]
    assert cmd["args"][:2] == ["create", "-f"]  # `create`, not `apply`: generateName needs it
    template = [d for _, d in of_kind("ConfigMap") if d["metadata"]["name"] == "harmony-nightly-rayjob"][0]
    assert yaml.safe_load(template["data"]["rayjob.yaml"])["metadata"]["generateName"]


# ---------------------------------------------------------------------------------------------
# credentials: from a Secret only


def test_credentials_come_from_the_secret_only():
    (secret,) = [d for _, d in of_kind("Secret")]
    assert secret["metadata"]["name"] == SECRET_NAME
    assert set(CREDENTIAL_VARS) <= set(secret["stringData"])
    assert all(v == "REPLACE_ME" for v in secret["stringData"].values())  # a template, no values
    for where, pod in pod_specs():
        for c in pod["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            for name, e in env.items():
                if re.search(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", name, re.I):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    assert "value" not in e and ref, f"{where}: {name} must come from a secretKeyRef"
                    assert ref["name"] == SECRET_NAME and ref["key"] in secret["stringData"]
            if not where.endswith("cronjob"):
                assert set(CREDENTIAL_VARS) <= set(env), f"{where}: every Ray pod reads object storage"
            assert not c.get("envFrom"), where


def test_no_literal_credentials_anywhere_in_deploy():
    patterns = [r"AKIA[0-9A-Z]{16}", r"ASIA[0-9A-Z]{16}",
                r"(?i)(aws_secret_access_key|secret|password|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{30,}",
                r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"]
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in ("", ".yaml", ".yml", ".md", ".sh", ".lock", ".py", ".dockerignore"):
            text = path.read_text()
            for pat in patterns:
                assert not re.search(pat, text), f"{path}: {pat}"
    assert "ENV AWS_" not in (DEPLOY / "Dockerfile").read_text() and "ARG AWS_" not in (DEPLOY / "Dockerfile").read_text()


# ---------------------------------------------------------------------------------------------
# the image and the lock


def _dockerfile_base() -> str:
    text = (DEPLOY / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    (base,) = re.findall(r"^FROM\s+(\S+)", text, re.M)
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)


def test_dockerfile_base_matches_installed_ray_and_python():
    import ray

    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert _dockerfile_base() == f"rayproject/ray:{ray.__version__}-{py}-gpu"
    text = (DEPLOY / "Dockerfile").read_text() + (DEPLOY / "build.sh").read_text()
    assert f"rayproject/ray:{ray.__version__}-{py}-cpu" in text or \
        (f"RAY_TAG={ray.__version__}-{py}" in text and "$RAY_TAG-cpu" in text)
    assert "ray-ml" not in _dockerfile_base()
    assert "COPY --chown=ray:users deploy/requirements.lock" in text


def test_images_in_manifests_carry_the_project_version():
    version = md.version("harmony")
    for where, pod in pod_specs():
        for c in pod["containers"]:
            if "harmony" in c["image"]:
                assert c["image"].rsplit(":", 1)[1] in (f"{version}-gpu", f"{version}-cpu"), (where, c["image"])


def _lock() -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_lock_pins_every_runtime_dependency_at_the_installed_version():
    pins = _lock()
    direct = [Requirement(r) for r in md.requires("harmony") or [] if "extra ==" not in r]
    for req in direct:
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} missing from deploy/requirements.lock"
        installed = re.sub(r"\+.*$", "", md.version(name))
        assert pins[name] == installed, f"{name}: lock {pins[name]} != installed {installed}; run deploy/lock.py"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name} {pins[name]} violates {req}"
    import ray

    assert pins["ray"] == ray.__version__ and f"ray:{pins['ray']}-" in _dockerfile_base()
    assert "ray[data]==" in (DEPLOY / "requirements.lock").read_text()
    clip = (DEPLOY / "requirements-clip.lock").read_text()
    assert re.search(r"^transformers==\S+$", clip, re.M)


# ---------------------------------------------------------------------------------------------
# core objects against the Kubernetes schemas


CORE_KINDS = ("ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding", "CronJob")


@pytest.mark.parametrize("kind", CORE_KINDS)
def test_core_objects_validate_against_kubernetes_schemas(kind):
    kv = pytest.importorskip("kubernetes_validate")
    objects = of_kind(kind)
    assert objects, kind
    for path, d in objects:
        try:
            kv.validate(d, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{path.name} {kind} {d['metadata'].get('name')}: {exc}")


def test_deploy_readme_covers_the_operations():
    text = (DEPLOY / "README.md").read_text()
    for needle in ("docker build", "docker push", "kubectl apply", "ray job submit", "--working-dir",
                   "dashboard", "resume", "nvidia.com/gpu", "KubeRay", "RayCronJob", "--validate=strict",
                   "activeDeadlineSeconds"):
        assert needle in text, needle
