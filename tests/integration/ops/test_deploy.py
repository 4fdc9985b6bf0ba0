"""The deployment files docs/operations.md points at: linted, validated and, for the
image's install script, run."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import REPO_ROOT

BIN = Path(sys.executable).parent
KUBERNETES = REPO_ROOT / "deploy" / "kubernetes" / "ehi-bridge.yaml"


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", "Dockerfile"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_volume_and_healthcheck() -> None:
    lines = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    instructions = [line.split()[0] for line in lines if line and not line.startswith((" ", "#"))]
    assert instructions.count("FROM") == 2
    assert any(line.startswith("COPY --from=build") for line in lines)
    user = next(line.split()[1] for line in lines if line.startswith("USER "))
    assert not user.startswith(("0", "root"))
    assert 'VOLUME ["/data"]' in lines
    healthcheck = " ".join(
        lines[lines.index(next(x for x in lines if x.startswith("HEALTHCHECK"))) :]
    )
    assert "/healthz" in healthcheck
    assert any("deploy/install.sh" in line and line.startswith("RUN") for line in lines)


def test_kubernetes_example_is_valid() -> None:
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", str(KUBERNETES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    docs = list(yaml.safe_load_all(KUBERNETES.read_text(encoding="utf-8")))
    kinds = {d["kind"]: d for d in docs}
    assert {"Secret", "Deployment", "StatefulSet", "Service"} <= set(kinds)
    web = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "--no-background" in web["command"]
    worker = kinds["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    executor = next(e for e in worker["env"] if e["name"] == "EHI_EXECUTOR_ID")
    assert executor["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO_ROOT / "deploy" / "systemd" / name, encoding="utf-8")
    return parser


def test_systemd_units_run_serve_and_worker_unprivileged_with_stable_executor_ids() -> None:
    web, worker = _unit("ehi-bridge.service"), _unit("ehi-bridge-worker@.service")
    assert web["Service"]["ExecStart"].split()[1] == "serve"
    assert worker["Service"]["ExecStart"].split()[1] == "worker"
    for unit in (web, worker):
        assert unit["Service"]["User"] not in ("", "root")
        assert unit["Service"]["ExecStart"].startswith("/opt/ehi-bridge/bin/ehi-bridge ")
        assert unit["Install"]["WantedBy"] == "multi-user.target"
    raw = (REPO_ROOT / "deploy" / "systemd" / "ehi-bridge-worker@.service").read_text()
    assert "Environment=EHI_EXECUTOR_ID=%H-worker-%i" in raw


def test_render_blueprint_has_web_and_worker_on_postgres() -> None:
    blueprint = yaml.safe_load((REPO_ROOT / "render.yaml").read_text(encoding="utf-8"))
    services = {s["type"]: s for s in blueprint["services"]}
    assert services["web"]["healthCheckPath"] == "/healthz"
    assert "--no-background" in services["web"]["dockerCommand"]
    assert services["worker"]["dockerCommand"] == "ehi-bridge worker"
    for service in services.values():
        keys = {v["key"]: v for v in service["envVars"]}
        assert keys["EHI_DATABASE_URL"]["fromDatabase"]["name"] == blueprint["databases"][0]["name"]


@pytest.mark.slow
def test_the_images_install_script_installs_a_working_cli(tmp_path: Path) -> None:
    prefix = tmp_path / "opt"
    env = {**os.environ, "PREFIX": str(prefix)}
    installed = subprocess.run(
        ["sh", str(REPO_ROOT / "deploy" / "install.sh"), str(REPO_ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert not (prefix / "bin" / "uv").exists()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EHI_")}
    clean["EHI_DATA_DIR"] = str(tmp_path / "data")
    upgraded = subprocess.run(
        [str(prefix / "bin" / "ehi-bridge"), "db", "upgrade"],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    # Not the checkout's editable install: the package lives inside the prefix.
    where = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", "import ehi_bridge; print(ehi_bridge.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(prefix))
