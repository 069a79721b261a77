"""The deployment, checked offline: every overlay rendered by kustomize and validated against the KubeRay
CRDs and Kubernetes' schemas, the security policy, broken manifests that must be caught, and the image
recipe agreeing with the project (its CLI, its extras, its locked dependencies)."""

from __future__ import annotations

import copy
import fnmatch
import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: The overlays users deploy: two campaign RayJobs and their standalone RayClusters.
JOB_OVERLAYS = ("dev", "gpu")
CLUSTER_OVERLAYS = ("dev/cluster", "gpu/cluster")
#: Markers of the image's platform (deploy/Dockerfile: CPython 3.11 on x86-64 Linux).
IMAGE_MARKERS = {
    **default_environment(),
    "python_version": "3.11",
    "python_full_version": "3.11.13",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def _load_validate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_validate", DEPLOY / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


validate = _load_validate()


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        message = "kubectl (with its built-in kustomize) renders the overlays; install kubectl >= 1.27"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    return {name: validate.render(DEPLOY / "overlays" / name) for name in JOB_OVERLAYS + CLUSTER_OVERLAYS}


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def ray_cluster_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = {d["kind"] for d in docs}
    return (
        one(docs, "RayJob")["spec"]["rayClusterSpec"]
        if "RayJob" in kinds
        else one(docs, "RayCluster")["spec"]
    )


def containers(node: Any) -> Iterator[dict[str, Any]]:
    for _, pod in validate.pod_specs(node, []):
        yield from pod.get("initContainers") or []
        yield from pod["containers"]


def messages(findings: list[Any]) -> str:
    return "\n".join(map(str, findings))


# ---- every rendered manifest validates and complies --------------------------------------------------------


def test_the_overlays_are_the_ones_documented(kubectl: str) -> None:
    found = {str(p.relative_to(DEPLOY / "overlays")) for p in validate.overlays()}
    assert found == set(JOB_OVERLAYS + CLUSTER_OVERLAYS)


@pytest.mark.parametrize("name", JOB_OVERLAYS + CLUSTER_OVERLAYS)
def test_every_rendered_manifest_validates(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    docs = rendered[name]
    custom = [d for d in docs if (d["apiVersion"], d["kind"]) in validate.CRD_FILES]
    assert len(custom) == 1, "each overlay renders one RayJob or one RayCluster"
    assert {d["kind"] for d in docs} >= {"ServiceAccount", "NetworkPolicy"}
    for doc in docs:
        assert validate.schema_findings(doc) == [], validate.label(doc)


@pytest.mark.parametrize("name", JOB_OVERLAYS + CLUSTER_OVERLAYS)
def test_every_rendering_meets_the_security_policy(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    assert messages(validate.policy_findings(rendered[name])) == ""


def test_job_overlays_run_a_campaign_and_deploy_no_standalone_cluster(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name in JOB_OVERLAYS:
        kinds = sorted(d["kind"] for d in rendered[name])
        assert kinds == ["ConfigMap", "NetworkPolicy", "RayJob", "ServiceAccount"], name
    for name in CLUSTER_OVERLAYS:
        assert "RayJob" not in {d["kind"] for d in rendered[name]}


def test_the_rayjob_runs_exactly_the_overlays_cluster(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in JOB_OVERLAYS:
        job_cluster = one(rendered[name], "RayJob")["spec"]["rayClusterSpec"]
        assert job_cluster == one(rendered[f"{name}/cluster"], "RayCluster")["spec"], name


def test_the_gpu_cluster_autoscales_its_gpu_group_from_zero(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    spec = ray_cluster_spec(rendered["gpu"])
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    ray = gpu["template"]["spec"]["containers"][0]["resources"]
    assert int(ray["limits"]["nvidia.com/gpu"]) == 1 == int(ray["requests"]["nvidia.com/gpu"])
    assert groups["cpu"]["minReplicas"] == 0 < groups["cpu"]["maxReplicas"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in head)
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_the_dev_cluster_has_no_gpu_anywhere(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in ("dev", "dev/cluster"):
        spec = ray_cluster_spec(rendered[name])
        assert [g["groupName"] for g in spec["workerGroupSpecs"]] == ["cpu"]
        for container in containers(rendered[name]):
            for kind in ("requests", "limits"):
                assert "nvidia.com/gpu" not in container["resources"].get(kind, {})


def test_images_are_pinned_to_this_release(rendered: dict[str, list[dict[str, Any]]]) -> None:
    version = PYPROJECT["project"]["version"]
    for docs in rendered.values():
        for container in containers(docs):
            assert container["image"].endswith(f"declouder:{version}"), container["image"]


def test_every_ray_cluster_runs_the_ray_release_of_the_image_and_the_tests(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    pins = locked_versions()
    for docs in rendered.values():
        assert ray_cluster_spec(docs)["rayVersion"] == pins["ray"]
    assert metadata.version("ray") == pins["ray"], (
        "the tests run another Ray than the image: run deploy/lock.sh"
    )


def test_credentials_come_from_the_secrets_the_readme_creates(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    referenced: dict[str, set[str]] = {}
    for docs in rendered.values():
        for container in containers(docs):
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] == env["name"], "each variable comes from the Secret key of its name"
                    referenced.setdefault(ref["name"], set()).add(ref["key"])
    assert set(referenced) == {"declouder-object-store", "declouder-planetary-computer"}
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for secret, keys in referenced.items():
        command = re.search(rf"kubectl create secret generic {secret}\b(.*?)(?:\n\n|```)", readme, re.S)
        assert command, f"deploy/README.md does not show how to create Secret {secret}"
        for key in keys:
            assert f"--from-literal={key}=" in command.group(1) or key == "AWS_ENDPOINT_URL", (secret, key)


def test_the_namespace_enforces_the_restricted_pod_security_standard() -> None:
    namespace = yaml.safe_load((DEPLOY / "namespace.yaml").read_text(encoding="utf-8"))
    assert validate.schema_findings(namespace) == []
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# ---- deliberately broken manifests are caught -----------------------------------------------------------


def _gpu_group(job: dict[str, Any]) -> dict[str, Any]:
    (group,) = [g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    return group


def _head(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _rename(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


SCHEMA_BREAKS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "misspelt RayJob field": (
        lambda job: _rename(job["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
        "'shutdownAfterJobFinish' was unexpected",
    ),
    "misspelt worker group field": (
        lambda job: _rename(_gpu_group(job), "minReplicas", "minReplica"),
        "'minReplicas' is a required property",
    ),
    "misspelt container field": (
        lambda job: _rename(_head(job), "volumeMounts", "volumeMount"),
        "'volumeMount' was unexpected",
    ),
    "misspelt metadata field": (
        lambda job: _rename(job["metadata"], "labels", "lables"),
        "'lables' was unexpected",
    ),
    "wrong type": (
        lambda job: _gpu_group(job).update(maxReplicas="32"),
        "'32' is not of type 'integer'",
    ),
    "unknown enum value": (
        lambda job: job["spec"]["rayClusterSpec"]["authOptions"].update(mode="tokn"),
        "'tokn' is not one of",
    ),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_BREAKS))
def test_a_broken_rayjob_fails_its_schema(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    job = copy.deepcopy(one(rendered["gpu"], "RayJob"))
    breaks, expected = SCHEMA_BREAKS[case]
    breaks(job)
    assert expected in messages(validate.schema_findings(job))


def test_a_misspelt_container_field_is_caught_by_kubernetes_schema_too(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    job = copy.deepcopy(one(rendered["gpu"], "RayJob"))
    _rename(_head(job), "imagePullPolicy", "imagePulPolicy")
    found = messages(validate.schema_findings(job))
    assert "'imagePulPolicy' was unexpected) (KubeRay CRD" in found
    assert "(as a PodTemplate)" in found and "headGroupSpec.template.spec.containers[0]" in found


def test_a_misspelt_builtin_field_fails_kubernetes_schema(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policy = copy.deepcopy(one(rendered["gpu"], "NetworkPolicy"))
    _rename(policy["spec"], "podSelector", "podSelectr")
    found = messages(validate.schema_findings(policy))
    assert "'podSelector' is a required property (Kubernetes 1.30" in found


def _drop_gpu_limit(job: dict[str, Any]) -> None:
    resources = _gpu_group(job)["template"]["spec"]["containers"][0]["resources"]
    for kind in ("requests", "limits"):
        resources[kind].pop("nvidia.com/gpu")


def _root_container(job: dict[str, Any]) -> None:
    _head(job)["securityContext"].update(runAsUser=0, runAsNonRoot=False)
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot")


def _inline_secret(job: dict[str, Any]) -> None:
    env = _head(job)["env"]
    (secret,) = [e for e in env if e["name"] == "AWS_SECRET_ACCESS_KEY"]
    secret.pop("valueFrom")
    secret["value"] = "not-a-real-secret"


def _host_path(job: dict[str, Any]) -> None:
    pod = _gpu_group(job)["template"]["spec"]
    pod["volumes"].append({"name": "data", "hostPath": {"path": "/data"}})


def _no_ray_temp_dir(job: dict[str, Any]) -> None:
    container = _gpu_group(job)["template"]["spec"]["containers"][0]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["mountPath"] != "/tmp/ray"]


POLICY_BREAKS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "missing GPU limit": (_drop_gpu_limit, "the GPU group has no nvidia.com/gpu limit"),
    "GPU request without the same limit": (
        lambda job: _gpu_group(job)["template"]["spec"]["containers"][0]["resources"]["limits"].update(
            {"nvidia.com/gpu": "2"}
        ),
        "nvidia.com/gpu request 1 differs from its limit 2",
    ),
    "GPU group that never scales to zero": (
        lambda job: _gpu_group(job).update(minReplicas=2, replicas=2),
        "minReplicas 2: GPU nodes must scale from 0",
    ),
    "GPU on the head": (
        lambda job: _head(job)["resources"]["limits"].update({"nvidia.com/gpu": "1"}),
        "the head asks for a GPU",
    ),
    "root container": (_root_container, "runs as root (runAsUser: 0)"),
    "root container, runAsNonRoot": (_root_container, "runAsNonRoot is not true"),
    "privilege escalation": (
        lambda job: _head(job)["securityContext"].update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation is not false",
    ),
    "capabilities kept": (
        lambda job: _head(job)["securityContext"].update(capabilities={"add": ["NET_ADMIN"]}),
        "capabilities are not dropped",
    ),
    "writable root filesystem": (
        lambda job: _head(job)["securityContext"].update(readOnlyRootFilesystem=False),
        "root filesystem is writable",
    ),
    "no limits": (lambda job: _head(job)["resources"].pop("limits"), "no limits for cpu, memory"),
    "latest tag": (lambda job: _head(job).update(image="declouder:latest"), "uses :latest"),
    "untagged image": (lambda job: _head(job).update(image="declouder"), "has no tag"),
    "hostPath volume": (_host_path, "volume data is a hostPath"),
    "inline credential": (_inline_secret, "env AWS_SECRET_ACCESS_KEY carries a credential"),
    "no Ray temp dir": (_no_ray_temp_dir, "no emptyDir at Ray's temp dir /tmp/ray"),
    "unbounded emptyDir": (
        lambda job: _gpu_group(job)["template"]["spec"]["volumes"][0].update(emptyDir={}),
        "emptyDir tmp has no sizeLimit",
    ),
    "token auth off": (
        lambda job: job["spec"]["rayClusterSpec"].pop("authOptions"),
        "Ray token authentication is off",
    ),
    "dashboard on a load balancer": (
        lambda job: job["spec"]["rayClusterSpec"]["headGroupSpec"].update(serviceType="LoadBalancer"),
        "serviceType LoadBalancer exposes the dashboard",
    ),
    "dashboard ingress": (
        lambda job: job["spec"]["rayClusterSpec"]["headGroupSpec"].update(enableIngress=True),
        "enableIngress exposes the dashboard",
    ),
    "unhardened autoscaler": (
        lambda job: job["spec"]["rayClusterSpec"]["autoscalerOptions"].pop("securityContext"),
        "autoscalerOptions: allowPrivilegeEscalation is not false",
    ),
    "worker with a service account token": (
        lambda job: _gpu_group(job)["template"]["spec"].pop("automountServiceAccountToken"),
        "mounts a service account token",
    ),
    "cluster outliving its job": (
        lambda job: job["spec"].pop("shutdownAfterJobFinishes"),
        "shutdownAfterJobFinishes is not true",
    ),
    "job without a deadline": (
        lambda job: job["spec"].pop("activeDeadlineSeconds"),
        "spec.activeDeadlineSeconds is not set",
    ),
    "entrypoint that is not the CLI": (
        lambda job: job["spec"].update(entrypoint="python -c 'import os'"),
        "is not a declouder command",
    ),
}


@pytest.mark.parametrize("case", sorted(POLICY_BREAKS))
def test_a_policy_breach_is_caught(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    docs = copy.deepcopy(rendered["gpu"])
    breaks, expected = POLICY_BREAKS[case]
    breaks(one(docs, "RayJob"))
    assert expected in messages(validate.policy_findings(docs))


def test_secrets_services_and_ingresses_in_the_manifests_are_caught(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = copy.deepcopy(rendered["gpu/cluster"])
    docs.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"}, "stringData": {"k": "v"}}
    )
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "dash"},
            "spec": {"type": "NodePort", "ports": [{"port": 8265}]},
        }
    )
    docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "dash"}})
    docs = [d for d in docs if d["kind"] != "NetworkPolicy"]
    found = messages(validate.policy_findings(docs))
    for expected in (
        "Secret/keys: a Secret in the manifests",
        "Service type NodePort",
        "Ingress/dash: a Ingress exposes",
        "no NetworkPolicy limits",
    ):
        assert expected in found


def test_a_broken_overlay_fails_the_validation_command(
    kubectl: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end through kustomize: an overlay on top of the production one that runs the head as root
    and misspells a field; `python deploy/validate.py OVERLAY` names both and exits 1."""
    overlay = tmp_path / "broken"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(DEPLOY / "overlays" / "gpu", overlay)],
                "patches": [
                    {
                        "target": {"kind": "RayJob", "name": "declouder-campaign"},
                        "patch": yaml.safe_dump(
                            [
                                {
                                    "op": "replace",
                                    "path": "/spec/rayClusterSpec/headGroupSpec/template/spec/containers/0"
                                    "/securityContext/runAsUser",
                                    "value": 0,
                                },
                                {"op": "add", "path": "/spec/ttlSecondAfterFinished", "value": 60},
                            ]
                        ),
                    }
                ],
            }
        )
    )
    assert validate.main([str(overlay)]) == 1
    out = capsys.readouterr().out
    assert "runs as root (runAsUser: 0)" in out
    assert "'ttlSecondAfterFinished' was unexpected" in out


def test_the_validation_command_passes_on_the_project(
    kubectl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert validate.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("schema: KubeRay CRD (closed)") == len(JOB_OVERLAYS + CLUSTER_OVERLAYS)
    assert "0 problem(s)" in out


# ---- the image recipe agrees with the project -----------------------------------------------------------

DOCKERFILE = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")


def dockerfile_runs() -> list[str]:
    """RUN instructions of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line[len("RUN ") :] for line in joined.splitlines() if line.startswith("RUN ")]


def locked_versions() -> dict[str, str]:
    text = (DEPLOY / "requirements.lock").read_text(encoding="utf-8")
    return {
        canonicalize_name(name): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", text, re.M)
    }


def image_extras() -> list[str]:
    (extras,) = re.findall(r'pip install --no-index --no-build-isolation "/src\[([^\]]*)\]"', DOCKERFILE)
    return extras.split(",")


def test_the_dockerfile_lints_clean_and_is_pinned() -> None:
    assert messages(validate.dockerfile_findings()) == ""


def test_the_extras_the_image_installs_exist() -> None:
    extras = image_extras()
    assert extras, "the Dockerfile installs the project with its extras"
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"]) - {"dev"}
    assert "cloud" in extras, "clusters read and write object stores"


def test_the_lock_pins_everything_the_project_and_the_image_need() -> None:
    pins = locked_versions()
    requirements = list(PYPROJECT["project"]["dependencies"])
    for extra in image_extras():
        requirements += PYPROJECT["project"]["optional-dependencies"][extra]
    requirements += [
        line.split("#")[0].strip()
        for line in (DEPLOY / "requirements.in").read_text(encoding="utf-8").splitlines()
        if line.split("#")[0].strip()
    ]
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(IMAGE_MARKERS):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in deploy/requirements.lock: run deploy/lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"deploy/requirements.lock pins {name}=={pins[name]}, outside {requirement}: run deploy/lock.sh"
        )
    lock = (DEPLOY / "requirements.lock").read_text(encoding="utf-8")
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 2)[2])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block), "every pin has hashes"


def test_the_image_torch_is_a_cuda_build_of_the_minor_the_tests_run() -> None:
    pins = locked_versions()
    minor = ".".join(metadata.version("torch").split("+")[0].split(".")[:2])
    assert pins["torch"].startswith(f"{minor}."), (pins["torch"], minor)
    assert any(name.startswith("nvidia-cuda-runtime") for name in pins), (
        "PyPI's torch wheel is the CUDA build"
    )


def test_the_vgg_weights_are_baked_where_the_fit_looks_with_their_checksum() -> None:
    vgg = importlib.import_module("fit.vgg")
    (checksum, url, dest) = re.findall(
        r"ADD --checksum=sha256:([0-9a-f]{64})\s*\\?\s*(\S+) (\S+)", DOCKERFILE
    )[0]
    assert url == vgg.VGG16_URL and dest.endswith(vgg.VGG16_FILENAME)
    assert checksum.startswith(vgg.VGG16_SHA256_PREFIX), "torch.hub names the file after its hash"
    torch_home = re.search(r"TORCH_HOME=(\S+)", DOCKERFILE).group(1)
    assert (
        f"COPY --from=weights --chmod=0444 {dest} {torch_home}/hub/checkpoints/{vgg.VGG16_FILENAME}"
        in DOCKERFILE
    )
    assert f"{checksum}  {torch_home}/hub/checkpoints/{vgg.VGG16_FILENAME}" in DOCKERFILE


def test_the_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    rules = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        verdict = False
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!")
            parts = path.split("/")
            if any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
                verdict = not negate
        return verdict

    sources = []
    for line in re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines():
        words = [w for w in line.split() if not w.startswith("--")]
        if words and words[0] == "COPY" and "--from=" not in line:
            sources += words[1:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f".dockerignore keeps {source} out of the build"
    assert ignored("tests/test_deploy.py") and ignored(".git") and ignored("deploy/README.md")


CLI = CliRunner()


def cli_invocations() -> list[list[str]]:
    """Every `declouder ...` command the deployment runs: the image's smoke stage and the RayJob."""
    calls = []
    for run in dockerfile_runs():
        for part in re.split(r"&&|>", run):
            argv = shlex.split(part)
            if argv and argv[0] == "declouder":
                calls.append(argv)
    job = yaml.safe_load((DEPLOY / "components" / "rayjob" / "rayjob.yaml").read_text(encoding="utf-8"))
    calls.append(shlex.split(job["spec"]["entrypoint"]))
    return calls


def test_every_command_the_deployment_runs_is_a_real_cli_command() -> None:
    from campaign.cli import app

    calls = cli_invocations()
    assert {argv[1] for argv in calls if len(argv) > 1 and not argv[1].startswith("-")} >= {"fit", "run"}
    for argv in calls:
        if argv[1:] == ["--version"]:
            result = CLI.invoke(app, ["--version"])
            assert result.exit_code == 0 and result.output.startswith("declouder "), result.output
            continue
        result = CLI.invoke(app, [argv[1], "--help"])
        assert result.exit_code == 0, f"`declouder {argv[1]}` is not a command: {result.output}"
        for option in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
            assert option in result.output, f"`declouder {argv[1]}` has no option {option}"


def test_the_rayjob_config_path_is_where_the_configmap_is_mounted(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name in JOB_OVERLAYS:
        job = one(rendered[name], "RayJob")
        config_path = Path(shlex.split(job["spec"]["entrypoint"])[-1])
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        (mount,) = [
            m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == str(config_path.parent)
        ]
        (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
        configmap = one(rendered[name], "ConfigMap")
        assert volume["configMap"]["name"] == configmap["metadata"]["name"]
        assert config_path.name in configmap["data"]


@pytest.mark.parametrize("name", JOB_OVERLAYS)
def test_the_campaign_configs_shipped_with_the_overlays_are_valid(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    config = pytest.importorskip("campaign.config")
    path = tmp_path / "campaign.toml"
    path.write_text(one(rendered[name], "ConfigMap")["data"]["campaign.toml"], encoding="utf-8")
    campaign = config.load_config(path)
    assert campaign.output.startswith("s3://"), "a cluster campaign writes to an object store"
    presets = getattr(importlib.import_module("fit"), "PRESETS", None)
    if presets is not None:
        assert campaign.fit.preset in presets


def test_the_readme_shows_every_step_with_paths_that_exist() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for step in (
        "docker build",
        "docker push",
        "helm install",
        "kubectl create secret generic",
        "kubectl apply -k deploy/overlays/gpu",
        "ray job submit",
        "logs -f job/declouder-campaign",
        "declouder status",
        "delete rayjob declouder-campaign",
        "kubectl delete -k deploy/overlays/gpu",
        "declouder estimate",
    ):
        assert step in readme, step
    for path in set(re.findall(r"\bdeploy/[\w./-]*\w", readme)):
        assert (ROOT / path).exists(), f"deploy/README.md names {path}, which does not exist"


@pytest.mark.slow
def test_the_image_smoke_fit_runs_on_this_checkout(tmp_path: Path) -> None:
    """The smoke stage's fit, run here exactly as the Dockerfile runs it (CPU, the sample tile)."""
    (smoke,) = [argv for argv in cli_invocations() if argv[1:2] == ["fit"]]
    tile = ROOT / "tests" / "data" / "worldcereal_31ues.zarr"
    argv = [str(tile) if a == "/tmp/sample/tile.zarr" else a for a in smoke[1:]]
    argv = [str(tmp_path / "fitted.zarr") if a.startswith("/tmp/") else a for a in argv]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "campaign", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "fitted.zarr").exists()
