"""deploy/kubernetes/ as `podman kube play` (4.3, Debian 12's) can run it, for
scripts/check-container.

    python -m devtools.kubeplay --out DIR --image IMAGE --port PORT --prefix NAME \\
        --config KEY=VALUE ... --secret KEY=VALUE ...

writes into DIR:
- `config.yaml`: the ConfigMap, for `kube play --configmap`;
- `release.yaml`: migrate-job.yaml's pod template as a Pod (podman plays Pods,
  Deployments and PersistentVolumeClaims, not Jobs);
- `app.yaml`: web.yaml's and worker.yaml's Deployments (their replicas, security
  contexts, probes, volumes, secret and config references as written);
- `secret.json`: the Secret, in the form `podman secret create` takes for a kube play
  secretKeyRef (a JSON object of base64 values).

What changes, and why (everything else is played as written):
- the image is IMAGE (kustomize's `images:` does this on a cluster);
- object names, and the names that refer to them, start with NAME instead of
  `hubimages`, so the pods, the secret and the volumes are this run's alone;
- the ConfigMap's data is the --config pairs, the Secret's the --secret pairs;
- the pods share the host's network (`kube play --network host`; there is no cluster
  network and no Service here), so web listens on PORT, its probes ask PORT, and its
  `ports:` are dropped: podman 4.3 publishes every containerPort on the host, which the
  host network refuses ("PortMappings can only be used with Bridge or slirp4netns").
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

import yaml

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
NAME = "hubimages"


def load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def rename(name: str, prefix: str) -> str:
    if name != NAME and not name.startswith(f"{NAME}-"):
        raise ValueError(f"{name!r} does not start with {NAME!r}")
    return prefix + name.removeprefix(NAME)


def adapt_pod_spec(spec: dict[str, Any], *, image: str, port: int, prefix: str) -> None:
    for volume in spec.get("volumes", []):
        volume["name"] = rename(f"{NAME}-{volume['name']}", prefix)
    for container in spec["containers"]:
        container["image"] = image
        container.pop("ports", None)
        for source in container.get("envFrom", []):
            source["configMapRef"]["name"] = rename(source["configMapRef"]["name"], prefix)
        for variable in container.get("env", []):
            if variable["name"] == "PORT":
                variable["value"] = str(port)
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                reference["name"] = rename(reference["name"], prefix)
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in container:
                container[probe]["httpGet"]["port"] = port
        for mount in container.get("volumeMounts", []):
            mount["name"] = rename(f"{NAME}-{mount['name']}", prefix)


def build(
    *, image: str, port: int, prefix: str, config: dict[str, str], secret: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    (configmap,) = load("config.yaml")
    configmap["metadata"]["name"] = rename(configmap["metadata"]["name"], prefix)
    configmap["data"] = config

    (job,) = load("migrate-job.yaml")
    if job["kind"] != "Job":
        raise ValueError(f"migrate-job.yaml holds a {job['kind']}, not a Job")
    release = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": rename(job["metadata"]["name"], prefix),
            "labels": job["spec"]["template"]["metadata"]["labels"],
        },
        "spec": job["spec"]["template"]["spec"],
    }
    adapt_pod_spec(release["spec"], image=image, port=port, prefix=prefix)

    deployments = []
    for name in ("web.yaml", "worker.yaml"):
        for doc in load(name):
            if doc["kind"] != "Deployment":
                continue  # the Service: no cluster network here
            doc["metadata"]["name"] = rename(doc["metadata"]["name"], prefix)
            adapt_pod_spec(doc["spec"]["template"]["spec"], image=image, port=port, prefix=prefix)
            deployments.append(doc)

    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in secret.items()}
    return configmap, release, deployments, encoded


def pairs(items: list[str]) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"kubeplay: {item!r} is not KEY=VALUE")
        result[key] = value
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--secret", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    configmap, release, app, secret = build(
        image=args.image,
        port=args.port,
        prefix=args.prefix,
        config=pairs(args.config),
        secret=pairs(args.secret),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.yaml").write_text(yaml.safe_dump(configmap, sort_keys=False))
    (args.out / "release.yaml").write_text(yaml.safe_dump(release, sort_keys=False))
    (args.out / "app.yaml").write_text(yaml.safe_dump_all(app, sort_keys=False))
    secret_path = args.out / "secret.json"
    secret_path.touch(mode=0o600)
    secret_path.write_text(json.dumps(secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
