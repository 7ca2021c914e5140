"""deploy/: the image definition, the lock, and the KubeRay manifests stay consistent with the project.

Core Kubernetes objects are validated against the Kubernetes JSON schemas when `kubernetes-validate`
is installed (the `test` extra); KubeRay's CRDs (RayJob, RayCronJob) have no schema here, so their
required fields are checked by hand.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines.cli import _harmonize_flags, build_parser
from pipelines.config import HarmonizeJobConfig, build

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
K8S_VERSION = "1.30.0"  # CronJob.spec.timeZone is GA since 1.27
SECRET_NAME = "harmony-s3"
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


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
    assert args.command == "harmonize" and args.config == "/etc/harmony/job.yaml"
    # the config it names is the ConfigMap, mounted where the driver runs (the head pod)
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for c in head["containers"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes[mounts["/etc/harmony"]]["configMap"]["name"] == "harmony-job"
    # flags + YAML make a valid configuration, flags winning
    (tmp_path / "job.yaml").write_text(job_config_text())
    cfg = build(HarmonizeJobConfig, tmp_path / "job.yaml", _harmonize_flags(args))
    if args.actors:
        lo, _, hi = args.actors.partition(",")
        assert (cfg.pools.model.min_workers, cfg.pools.model.max_workers) == (int(lo), int(hi or lo))


# ---------------------------------------------------------------------------------------------
# KubeRay CRDs: required fields by hand


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
    for where in ("raycronjob.yaml:jobTemplate", "nightly-cronjob.yaml:rayjob.yaml"):
        spec = dict(specs[where])
        assert 0 < spec.pop("activeDeadlineSeconds") < 24 * 3600  # one night's run ends before the next
        expected = {k: v for k, v in bulk["spec"].items() if k != "activeDeadlineSeconds"}
        assert spec == expected, where
    (rcj,) = [d for _, d in of_kind("RayCronJob")]
    (cron,) = [d for _, d in of_kind("CronJob")]
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
                   "dashboard", "resume", "nvidia.com/gpu", "KubeRay", "RayCronJob"):
        assert needle in text, needle
