"""What a Kubernetes cluster runs, read from the JSON that
`kubectl get pods,deployments,replicasets,statefulsets,daemonsets,cronjobs,jobs -A -o json`
prints (a `List`), as an in-use report's images (SPEC §13).

Two kinds of evidence, both kept:
- the digest the runtime resolved for each container that started
  (`status.containerStatuses[].imageID`, init and ephemeral containers too): what runs
  now, whatever its tag points at since;
- the image of every pod template (Deployments, ReplicaSets, StatefulSets, DaemonSets,
  Jobs, CronJobs' job templates) and of each pod's own spec: what starts on the next
  restart, scale-up or rollback. A Deployment scaled to zero and the old ReplicaSets kept
  for `kubectl rollout undo` run nothing today and need their images tomorrow.

References are sent as Docker reads them (`nginx` is `docker.io/library/nginx:latest`,
the `docker-pullable://` prefix dropped); a tag is resolved to a digest by hubimages when
the report arrives. An `imageID` that is a
bare `sha256:…` (an image loaded without a registry, or a runtime that reports the config
digest) names no manifest: it is counted as skipped, never sent.

No Django: this runs in a CronJob with the reporter's token and nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hubimages.inuse import references

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
STATUS_LISTS = ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")
KINDS = ("Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob")
EXAMPLES_KEPT = 5


@dataclass
class Reading:
    """The report's images, each `{"reference", "where"}` once, and what was left out."""

    images: list[dict[str, str]] = field(default_factory=list)
    # Why images were left out ("image ID (config digest)", "not a reference") -> how many.
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, why: str, what: str) -> None:
        self.skipped[why] += 1
        kept = self.examples.setdefault(why, [])
        if len(kept) < EXAMPLES_KEPT and what not in kept:
            kept.append(what)


class NotAList(ValueError):
    """The input is not what `kubectl get … -o json` prints."""


def read(document: Any, *, cluster: str) -> Reading:
    """The images `document` (kubectl's `List`, or one object) names, each placed at
    `CLUSTER/NAMESPACE/KIND/NAME`."""
    if not isinstance(document, dict):
        raise NotAList("expected the JSON object kubectl get -o json prints")
    items = document.get("items") if document.get("kind") == "List" else [document]
    if not isinstance(items, list):
        raise NotAList("a List's items must be a list")
    reading = Reading()
    seen: set[tuple[str, str]] = set()
    for item in items:
        for image, where in _images_of(item, cluster):
            try:
                reference = str(references.parse(image))
            except references.ConfigDigest:
                reading.skip("image ID (a config digest, not in any registry)", image)
                continue
            except references.BadReference:
                reading.skip("not an image reference", image)
                continue
            key = (reference, where)
            if key not in seen:
                seen.add(key)
                reading.images.append({"reference": key[0], "where": where})
    return reading


def _images_of(item: Any, cluster: str) -> Iterator[tuple[str, str]]:
    if not isinstance(item, dict) or item.get("kind") not in KINDS:
        return
    metadata = _dict(item.get("metadata"))
    namespace = str(metadata.get("namespace") or "default")
    where = f"{cluster}/{namespace}/{item['kind'].lower()}/{metadata.get('name') or '?'}"
    spec = _dict(item.get("spec"))
    if item["kind"] == "Pod":
        pod_spec = spec
    elif item["kind"] == "CronJob":
        job_spec = _dict(_dict(spec.get("jobTemplate")).get("spec"))
        pod_spec = _dict(_dict(job_spec.get("template")).get("spec"))
    else:
        pod_spec = _dict(_dict(spec.get("template")).get("spec"))
    for key in CONTAINER_LISTS:
        for container in _list(pod_spec.get(key)):
            image = _dict(container).get("image")
            if isinstance(image, str) and image.strip():
                yield image, where
    status = _dict(item.get("status"))
    for key in STATUS_LISTS:
        for container in _list(status.get(key)):
            image_id = _dict(container).get("imageID")
            if isinstance(image_id, str) and image_id.strip():  # empty until it is pulled
                yield image_id, where


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []
