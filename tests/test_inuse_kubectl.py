"""The Kubernetes reporter (SPEC §13): `python -m hubimages.inuse kubectl` reads what
`kubectl get pods,deployments,replicasets,statefulsets,daemonsets,cronjobs,jobs -A -o json`
prints and sends it as a source's report. Its fixtures (`tests/fixtures/kubectl/`) are
written by hand from the Kubernetes API reference, in the shapes real clusters produce."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission

from hubimages.inuse import kubectl
from hubimages.inuse.__main__ import main
from hubimages.models import ApiToken, InUseReference, InUseSource, Registry, Repository
from hubimages.registries.config import RegistryConfig
from tests.api_helpers import bearer
from tests.builders import digest_for, finish, manifest

FIXTURES = Path(__file__).parent / "fixtures" / "kubectl"
HOST = "registry.example.com:5000"
API_12, API_11 = digest_for("api-1.2"), digest_for("api-1.1")
WORKER, DB, AGENT = digest_for("worker-2.0"), digest_for("db"), digest_for("agent-0.9")
ENVOY, NGINX, BUSYBOX = digest_for("envoy"), digest_for("nginx"), digest_for("busybox")
CONFIG = digest_for("local-config")


def fixture(*names: str) -> dict:
    """The fixtures' items as one List, as one `kubectl get a,b,c -A -o json` prints it."""
    items = []
    for name in names:
        document = json.loads((FIXTURES / name).read_text())
        assert "by hand from the Kubernetes API reference" in document["_comment"]
        items += document["items"]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def test_every_fixture_says_it_was_written_by_hand():
    files = sorted(FIXTURES.glob("*.json"))
    assert [f.name for f in files] == ["controllers.json", "pods.json"]
    for path in files:
        assert (
            "by hand from the Kubernetes API reference" in json.loads(path.read_text())["_comment"]
        )


def test_pods_give_their_runtime_digests_and_their_specs_images():
    reading = kubectl.read(fixture("pods.json"), cluster="prod")

    pod = "prod/shop/pod/api-7d9f8b6c4-x2kqp"
    assert reading.images == [
        # init containers, containers, then the statuses' resolved digests
        {"reference": f"{HOST}/team/api:1.2", "where": pod},
        {"reference": "docker.io/envoyproxy/envoy:v1.30.1", "where": pod},
        {"reference": f"{HOST}/team/api@{API_12}", "where": pod},
        {"reference": f"docker.io/envoyproxy/envoy@{ENVOY}", "where": pod},
        # Docker's short name and `docker-pullable://` prefix, read as Docker reads them
        {"reference": "docker.io/library/nginx:latest", "where": "prod/default/pod/web-0"},
        {"reference": f"docker.io/library/nginx@{NGINX}", "where": "prod/default/pod/web-0"},
        # a tag and a digest together; an ephemeral container and its status
        {"reference": f"{HOST}/team/worker:2.0@{WORKER}", "where": "prod/shop/pod/debug-target"},
        {"reference": "docker.io/library/busybox:1.36", "where": "prod/shop/pod/debug-target"},
        {"reference": f"{HOST}/team/worker@{WORKER}", "where": "prod/shop/pod/debug-target"},
        {
            "reference": f"docker.io/library/busybox@{BUSYBOX}",
            "where": "prod/shop/pod/debug-target",
        },
        {"reference": "docker.io/team/local:dev", "where": "prod/dev/pod/local-build"},
        # a waiting container has no imageID yet: its spec's image only
        {"reference": f"{HOST}/team/api:1.2", "where": "prod/shop/pod/api-7d9f8b6c4-pending"},
    ]
    # A bare config digest names no manifest: counted, never sent.
    assert reading.skipped == {"image ID (a config digest, not in any registry)": 1}
    assert reading.examples["image ID (a config digest, not in any registry)"] == [CONFIG]


def test_every_pod_template_counts_scaled_to_zero_kept_for_rollback_or_scheduled():
    reading = kubectl.read(fixture("controllers.json"), cluster="prod")

    assert reading.images == [
        {"reference": f"{HOST}/team/api:1.2", "where": "prod/shop/deployment/api"},
        {"reference": "docker.io/envoyproxy/envoy:v1.30.1", "where": "prod/shop/deployment/api"},
        {"reference": f"{HOST}/team/ui:3.1", "where": "prod/shop/deployment/batch-ui"},
        {"reference": f"{HOST}/team/api:1.1", "where": "prod/shop/replicaset/api-5c6b7d8f9"},
        {"reference": f"{HOST}/team/db@{DB}", "where": "prod/shop/statefulset/db"},
        # the init container and the container name one image: sent once
        {"reference": f"{HOST}/infra/agent:0.9", "where": "prod/kube-system/daemonset/node-agent"},
        {"reference": f"{HOST}/team/report:2026.01", "where": "prod/shop/cronjob/nightly-report"},
        {"reference": f"{HOST}/team/api:1.2", "where": "prod/shop/job/migrate-42"},
    ]
    assert not reading.skipped


def test_what_is_not_kubectls_json_is_refused():
    for document in ([], "text", {"kind": "List", "items": {}}):
        with pytest.raises(kubectl.NotAList):
            kubectl.read(document, cluster="prod")
    odd = {"kind": "List", "items": [{"kind": "Service"}, {"kind": "Pod", "spec": []}, 7]}
    assert kubectl.read(odd, cluster="prod").images == []


def test_a_broken_image_is_skipped_and_counted():
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "n"},
        "spec": {"containers": [{"image": "Registry Host/x"}, {"image": "ok/image:1"}]},
    }
    reading = kubectl.read(pod, cluster="c")

    assert reading.images == [{"reference": "docker.io/ok/image:1", "where": "c/n/pod/p"}]
    assert reading.skipped == {"not an image reference": 1}


# -- the whole command, against a live server ----------------------------------------------------


@pytest.fixture
def prod(settings, transactional_db):
    """The registry `prod` at HOST, holding what the fixtures name (by the builders'
    digests), but for `team/report:2026.01`."""
    settings.REGISTRIES = [RegistryConfig(name="prod", url=f"https://{HOST}")]
    registry = Registry.objects.create(name="prod", url=f"https://{HOST}", configured=True)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    for repository, seed, tag in (
        ("team/api", "api-1.2", "1.2"),
        ("team/api", "api-1.1", "1.1"),
        ("team/worker", "worker-2.0", "2.0"),
        ("team/db", "db", ""),
        ("infra/agent", "agent-0.9", "0.9"),
        ("team/ui", "ui-3.1", "3.1"),
    ):
        repo, _ = Repository.objects.get_or_create(registry=registry, name=repository)
        manifest(repo, seed, pushed_at=when, tags=[tag] if tag else [])
        finish(repo)
    return registry


@pytest.fixture
def reporter_token(django_user_model, prod) -> str:
    user = django_user_model.objects.create_user("cluster-prod")
    user.user_permissions.add(Permission.objects.get(codename="add_inusesource"))
    return bearer(user, ApiToken.Scope.REPORT)["Authorization"].split()[1]


def test_the_command_sends_the_cluster_as_a_report(live_server, prod, reporter_token, monkeypatch):
    monkeypatch.setenv("HUBIMAGES_TOKEN", reporter_token)
    monkeypatch.setenv("HUBIMAGES_REQUIRED", "true")
    stdin = StringIO(json.dumps(fixture("pods.json", "controllers.json")))
    stdout, stderr = StringIO(), StringIO()

    code = main(
        ["kubectl", "--url", live_server.url, "--source", "prod-eu", "--ttl", "900"],
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
    )

    assert code == 0, stderr.getvalue()
    source = InUseSource.objects.get()
    assert (source.name, source.ttl_seconds, source.required) == ("prod-eu", 900, True)
    stored = set(InUseReference.objects.values_list("digest", "where"))
    api = "prod-eu/shop/pod/api-7d9f8b6c4-x2kqp"
    assert stored == {
        (API_12, api),
        (API_12, "prod-eu/shop/pod/api-7d9f8b6c4-pending"),
        (API_12, "prod-eu/shop/deployment/api"),
        (API_12, "prod-eu/shop/job/migrate-42"),
        (API_11, "prod-eu/shop/replicaset/api-5c6b7d8f9"),
        (digest_for("ui-3.1"), "prod-eu/shop/deployment/batch-ui"),
        (WORKER, "prod-eu/shop/pod/debug-target"),
        (DB, "prod-eu/shop/statefulset/db"),
        (AGENT, "prod-eu/kube-system/daemonset/node-agent"),
    }
    assert "hubimages keeps 9 on the registries it serves" in stdout.getvalue()
    assert "on other registries: docker.io ×8" in stdout.getvalue()
    errors = stderr.getvalue()
    assert "skipped 1 × image ID (a config digest, not in any registry)" in errors
    assert f"unknown to hubimages: {HOST}/team/report:2026.01 (prod-eu/shop/cronjob/" in errors


def test_the_command_says_why_hubimages_refused(live_server, prod, django_user_model, monkeypatch):
    user = django_user_model.objects.create_user("reader")
    monkeypatch.setenv("HUBIMAGES_TOKEN", bearer(user, "read")["Authorization"].split()[1])
    stderr = StringIO()

    code = main(
        ["kubectl", "--url", live_server.url, "--source", "prod"],
        stdin=StringIO(json.dumps(fixture("pods.json"))),
        stdout=StringIO(),
        stderr=stderr,
    )

    assert code == 1
    assert "hubimages answered 403: sending in-use reports needs a token of scope report" in (
        stderr.getvalue()
    )
    assert not InUseSource.objects.exists()


def test_bad_usage_and_bad_input_exit_2_before_sending(monkeypatch, tmp_path):
    monkeypatch.delenv("HUBIMAGES_TOKEN", raising=False)
    cases = [
        (["kubectl", "--url", "http://x"], "{}", "give the source's name"),
        (["kubectl", "--source", "p"], "{}", "give hubimages' address"),
        (["kubectl", "--source", "p", "--url", "http://x"], "{}", "give a report token"),
        (["kubectl", "--source", "p", "--dry-run"], "not json", "is not kubectl's JSON"),
        (
            ["kubectl", "--source", "p", "--url", "http://x", "--token-file", str(tmp_path / "no")],
            "{}",
            "cannot read the token file",
        ),
    ]
    for argv, text, says in cases:
        stderr = StringIO()
        assert main(argv, stdin=StringIO(text), stdout=StringIO(), stderr=stderr) == 2
        assert says in stderr.getvalue()


def test_the_dry_run_prints_the_report_and_the_reporter_needs_no_django(tmp_path):
    """A subprocess whose import system has no Django at all runs the reporter."""
    script = f"""
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "django":
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Absent())
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
sys.argv = ["hubimages.inuse", "kubectl", "--dry-run", "--source", "prod", "--ttl", "120"]
runpy.run_module("hubimages.inuse", run_name="__main__")
"""
    result = subprocess.run(
        [sys.executable, "-I", "-c", script],
        input=json.dumps(fixture("controllers.json")),
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "")},
        cwd=tmp_path,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ttl_seconds"] == 120 and report["required"] is False
    assert {"reference": f"{HOST}/team/db@{DB}", "where": "prod/shop/statefulset/db"} in (
        report["images"]
    )


# -- the manifests ---------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes" / "inuse-reporter.yaml"


def test_the_reporters_role_only_reads_what_the_command_lists_and_the_readme_shows_it():
    import yaml

    text = MANIFEST.read_text()
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(text)}
    # No Secret: the token is made apart, like the Secret `hubimages` (secret.example.yaml).
    assert set(documents) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "CronJob"}
    rules = documents["ClusterRole"]["rules"]
    assert {verb for rule in rules for verb in rule["verbs"]} == {"get", "list"}
    resources = {resource for rule in rules for resource in rule["resources"]}
    assert resources == {
        "pods",
        "deployments",
        "replicasets",
        "statefulsets",
        "daemonsets",
        "cronjobs",
        "jobs",
    }
    pod = documents["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    account = documents["ServiceAccount"]["metadata"]["name"]
    assert pod["serviceAccountName"] == account
    [subject] = documents["ClusterRoleBinding"]["subjects"]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", account)
    assert (
        documents["ClusterRoleBinding"]["roleRef"]["name"]
        == (documents["ClusterRole"]["metadata"]["name"])
    )
    # Like every other pod of deploy/kubernetes: not root, read-only, nothing extra.
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in (*pod["initContainers"], *pod["containers"]):
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
    # The hubimages image by kustomization.yaml's name for it, which lists the reporter.
    assert pod["containers"][0]["image"] == "hubimages"
    kustomization = yaml.safe_load((MANIFEST.parent / "kustomization.yaml").read_text())
    assert MANIFEST.name in kustomization["resources"]
    assert [image["name"] for image in kustomization["images"]] == ["hubimages"]
    listing = " ".join(pod["initContainers"][0]["command"][-1].split())
    assert listing == (
        "kubectl get pods,deployments,replicasets,statefulsets,daemonsets,cronjobs,jobs "
        "-A -o json > /report/cluster.json"
    )
    assert pod["containers"][0]["command"][-1] == (
        "python -m hubimages.inuse kubectl < /report/cluster.json"
    )
    env = {item["name"] for item in pod["containers"][0]["env"]}
    assert env == {
        "HUBIMAGES_URL",
        "HUBIMAGES_SOURCE",
        "HUBIMAGES_TTL_SECONDS",
        "HUBIMAGES_REQUIRED",
        "HUBIMAGES_TOKEN",
    }
    assert f"```yaml\n{text}```" in (ROOT / "README.md").read_text()
