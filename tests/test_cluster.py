"""cluster/: every manifest and config parses, and everything it names exists — entry-point
scripts and each flag they are given (checked against the script's own --help and parsed into
its config dataclass), the Serve app builder and its arguments, files the Dockerfile copies —
and the RayService's serveConfigV2 is a valid Serve config (what `serve build` writes)."""
from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"

# Entry-point script → (module, config dataclass) its flags are fields of.
JOB_CONFIGS = {
    "jobs/distill.py": ("mtdp.distill", "DistillConfig"),
    "jobs/embed.py": ("mtdp.embed_job", "EmbedJobConfig"),
    "jobs/precompute_teachers.py": ("mtdp.precompute", "PrecomputeConfig"),
}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all_yaml() -> list[Path]:
    return sorted(CLUSTER.rglob("*.yaml"))


def _by_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p)
            if d.get("kind") == kind]


def _help_flags(script: str) -> set[str]:
    """Flags a script's argparse accepts, from its own ``--help`` (what a user sees)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, f"{script} --help failed:\n{out.stderr[-2000:]}"
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout))


def _entrypoints() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command a manifest runs: RayJob entrypoints and the commands
    shown in cluster/README.md and the manifests' comments."""
    found = []
    for path, job in _by_kind("RayJob"):
        found.append((f"{path.name}: spec.entrypoint", shlex.split(job["spec"]["entrypoint"])))
    return found


def test_all_yaml_parses_and_kuberay_kinds_present() -> None:
    paths = _all_yaml()
    assert paths, "no YAML under cluster/"
    for p in paths:
        docs = _docs(p)
        assert docs, f"{p} is empty"
    kinds = {d.get("kind") for p in KUBERAY.glob("*.yaml") for d in _docs(p)}
    assert {"RayCluster", "RayJob", "RayService"} <= kinds, kinds
    for path, d in [(p, d) for p in KUBERAY.glob("*.yaml") for d in _docs(p)]:
        if d["kind"] in ("RayCluster", "RayJob", "RayService"):
            assert d["apiVersion"] == "ray.io/v1", path


def test_raycluster_has_head_cpu_and_gpu_groups_with_shared_storage_and_env() -> None:
    (path, rc), = _by_kind("RayCluster")
    spec = rc["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    gpu_res = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert str(gpu_res["limits"]["nvidia.com/gpu"]) == "1"
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0][
        "resources"]["limits"]
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in groups.values()]
    cms = {d["metadata"]["name"]: d for d in _docs(KUBERAY / "storage.yaml")}
    assert "MLFLOW_TRACKING_URI" in cms["mtdp-config"]["data"]
    for t in templates:
        c = t["spec"]["containers"][0]
        assert c["image"].startswith("REGISTRY/mtdp:")
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in t["spec"]["volumes"]}
        assert vols[mounts["/mnt/shared"]]["persistentVolumeClaim"]["claimName"] in cms
        assert c["envFrom"][0]["configMapRef"]["name"] == "mtdp-config"
        env = {e["name"]: e for e in c["env"]}
        # Production auth (ray-notes gotcha 4): token mode, token from the Secret.
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] in cms


@pytest.mark.parametrize("script", sorted(JOB_CONFIGS))
def test_rayjob_entrypoints_name_real_scripts_and_flags(script: str) -> None:
    uses = [(w, argv) for w, argv in _entrypoints() if argv[:2] == ["python", script]]
    assert uses, f"no RayJob runs {script}"
    assert (ROOT / script).is_file()
    accepted = _help_flags(script)
    module, cls_name = JOB_CONFIGS[script]
    cls = getattr(importlib.import_module(module), cls_name)
    from mtdp.config import add_dataclass_arguments, load_config
    import argparse

    for where, argv in uses:
        flags = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
        assert flags, where
        unknown = sorted(set(flags) - accepted)
        assert not unknown, f"{where}: {script} has no flag(s) {unknown}"
        # The values parse into the job's config dataclass (types, YAML keys) as the job does.
        p = argparse.ArgumentParser()
        p.add_argument("--config", default=None)
        add_dataclass_arguments(p, cls)
        args = p.parse_args(argv[2:])
        config = (ROOT / args.config) if args.config else None
        assert config is None or config.is_file(), f"{where}: --config {args.config} missing"
        cfg = load_config(cls, config, args)
        assert isinstance(cfg, cls)


def test_rayjobs_submit_with_the_auth_token_onto_the_raycluster() -> None:
    (_, rc), = _by_kind("RayCluster")
    for path, job in _by_kind("RayJob"):
        spec = job["spec"]
        assert spec["clusterSelector"]["ray.io/cluster"] == rc["metadata"]["name"], path
        sub = spec["submitterPodTemplate"]["spec"]["containers"][0]
        env = {e["name"]: e for e in sub["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", path
        yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))


def test_distill_job_checkpoints_to_shared_storage() -> None:
    argv = next(a for w, a in _entrypoints() if a[:2] == ["python", "jobs/distill.py"])
    opts = dict(zip(argv[2::2], argv[3::2]))
    assert opts["--storage-path"].startswith("/mnt/shared/")
    assert opts["--data"].startswith("/mnt/shared/")
    pre = next(a for w, a in _entrypoints() if a[:2] == ["python", "jobs/precompute_teachers.py"])
    pre_opts = dict(zip(pre[2::2], pre[3::2]))
    assert opts["--data"] == pre_opts["--output"], "distill must read what precompute writes"


def test_rayservice_serve_config_is_valid_and_names_the_real_app() -> None:
    from ray.serve.schema import ServeDeploySchema

    (path, svc), = _by_kind("RayService")
    raw = yaml.safe_load(svc["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(raw) if hasattr(
        ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(raw)
    (app,) = schema.applications
    assert app.import_path == "serve.app:mtdp"
    module, attr = app.import_path.split(":")
    sys.path.insert(0, str(ROOT))
    try:
        builder = getattr(importlib.import_module(module), attr)
    finally:
        sys.path.remove(str(ROOT))
    assert callable(builder)
    from mtdp.serving import ServeConfig
    import dataclasses

    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    unknown = set(app.args) - fields
    assert not unknown, f"{path}: serveConfigV2 args {sorted(unknown)} are not ServeConfig fields"
    ServeConfig.from_args(dict(app.args))  # values convert
    gpu = [g for g in svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
           if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu and app.args["num_gpus"] == 1


def test_ray_up_config_matches_the_cluster_launcher_schema() -> None:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    jsonschema.validate(cfg, schema)
    assert cfg["provider"]["type"] == "aws"
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert {"cpu_worker", "gpu_worker"} <= set(cfg["available_node_types"])
    run_opts = " ".join(cfg["docker"]["run_options"])
    assert "MLFLOW_TRACKING_URI=" in run_opts and "RAY_AUTH_MODE=token" in run_opts
    assert "/mnt/shared" in run_opts


def test_dockerfile_copies_files_that_exist() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    copied = []
    for line in text.splitlines():
        if line.startswith("COPY"):
            parts = [t for t in line.split()[1:] if not t.startswith("--")]
            copied += parts[:-1]
    assert copied
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


def test_readme_commands_name_real_files_and_flags() -> None:
    text = (CLUSTER / "README.md").read_text()
    for rel in re.findall(r"cluster/[\w./-]+\.(?:yaml|md)|cluster/Dockerfile", text):
        assert (ROOT / rel).exists(), f"cluster/README.md mentions missing {rel}"
    for script in JOB_CONFIGS:
        accepted = _help_flags(script) if script in text else set()
        for cmd in re.findall(rf"python {re.escape(script)}((?: \\\n\s*|[^\n`])*)", text):
            flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", cmd))
            assert not flags - accepted, f"README uses {sorted(flags - accepted)} of {script}"
    assert "RAY_AUTH_MODE=token" in text and "RAY_AUTH_MODE=disabled" in text
