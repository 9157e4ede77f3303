"""deploy/ checked with real tools (no container engine runs here; see the README's "Deploy").

- the Dockerfile with hadolint; every YAML file with yamllint;
- the Compose file loaded by compose-go, the library docker compose itself uses;
- the Kubernetes manifests: the base and the rendered overlay (kustomize, built from its
  Go module) with kubernetes-validate --strict; the Strimzi resources against Strimzi's
  own published model (io.strimzi:api, via deploy/checks/strimzi);
- the environment each part gets there is accepted by Settings.from_env: no unknown
  NDXP_ key, every value valid;
- deploy/k8s/base/topics.yaml is what deploy/k8s/topics.py makes from the code.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml

from broker.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
KUSTOMIZE = "sigs.k8s.io/kustomize/kustomize/v5@v5.5.0"
GO_ENV = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]  # a first run compiles kustomize


def run(
    cmd: list[str], *, cwd: Path = ROOT, env: Mapping[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run a tool; it must succeed. Its stdout is its output; stderr is only its talk (a first
    ``go run`` says ``go: downloading …`` there), never parsed as output."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def report(done: subprocess.CompletedProcess[str]) -> str:
    """What a checker said, wherever it said it (for messages that tell its verdict)."""
    return done.stdout + done.stderr


def need(tool: str) -> str:
    """A tool the checks cannot do without: Go comes with this kind of machine, Java and Maven
    are installed by scripts/setup. Missing, the check fails: a skip would pass unchecked."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed here: deploy/ cannot be checked without it")
    return path


def test_dockerfile_passes_hadolint() -> None:
    run([str(BIN / "hadolint"), str(DEPLOY / "Dockerfile")])


def test_every_yaml_file_passes_yamllint() -> None:
    files = [str(p) for p in sorted(DEPLOY.rglob("*.y*ml"))]
    config = "{extends: relaxed, rules: {line-length: {max: 200}}}"
    out = report(run([str(BIN / "yamllint"), "--strict", "-d", config, *files]))
    assert "error" not in out, out


def test_compose_file_loads_with_compose_go(tmp_path: Path) -> None:
    need("go")
    checker = tmp_path / "composecheck"
    run(["go", "build", "-o", str(checker), "."], cwd=DEPLOY / "checks" / "composecheck", env=GO_ENV)
    out = report(run([str(checker), "compose.yaml"], cwd=DEPLOY))
    assert "14 services valid" in out, out


@pytest.fixture(scope="module")
def rendered_overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("go")
    out = tmp_path_factory.mktemp("k8s") / "small.yaml"
    manifests = run(
        ["go", "run", KUSTOMIZE, "build", str(DEPLOY / "k8s" / "overlays" / "small")], env=GO_ENV
    ).stdout
    assert manifests.startswith("apiVersion"), manifests[:500]
    out.write_text(manifests)
    return out


def test_kubernetes_manifests_validate_strictly(rendered_overlay: Path) -> None:
    base = [
        str(p) for p in sorted((DEPLOY / "k8s" / "base").glob("*.yaml")) if p.name != "kustomization.yaml"
    ]
    for files in (base, [str(rendered_overlay)]):
        out = report(run([str(BIN / "kubernetes-validate"), "--strict", *files]))
        assert "ERROR" not in out, out
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered_overlay.read_text()) if d}
    assert kinds >= {
        "Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "NetworkPolicy", "ConfigMap", "Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ServiceMonitor",
    }  # fmt: skip


def test_strimzi_resources_fit_strimzis_own_model(rendered_overlay: Path, tmp_path: Path) -> None:
    need("mvn")
    need("java")
    check = DEPLOY / "checks" / "strimzi"
    classpath = tmp_path / "cp.txt"
    run(
        [
            "mvn",
            "-q",
            "-f",
            str(check / "pom.xml"),
            "dependency:build-classpath",
            f"-Dmdep.outputFile={classpath}",
        ]
    )
    files = [*(str(DEPLOY / "k8s" / "base" / f) for f in ("kafka.yaml", "topics.yaml", "users.yaml")),
             str(rendered_overlay)]  # fmt: skip
    out = report(
        run(["java", "-cp", classpath.read_text().strip(), str(check / "StrimziCheck.java"), *files])
    )
    assert ", 0 faults" in out, out
    users = sum(d["kind"] == "KafkaUser" for d in yaml.safe_load_all(rendered_overlay.read_text()) if d)
    assert users >= 2, "the platform's KafkaUser and the members' are checked too"


@pytest.mark.parametrize("generator", ["topics", "users"])
def test_generated_manifests_are_what_the_code_makes(generator: str) -> None:
    sys.path.insert(0, str(DEPLOY / "k8s"))
    try:
        module = importlib.import_module(generator)
    finally:
        sys.path.pop(0)
    assert (DEPLOY / "k8s" / "base" / f"{generator}.yaml").read_text() == module.render(), (
        f"deploy/k8s/base/{generator}.yaml is stale: run .venv/bin/python deploy/k8s/{generator}.py"
    )


def test_kafka_on_kubernetes_takes_its_users_acls_from_the_code() -> None:
    """Every client authenticates and is held to ACLs there: the platform's parts as the super user,
    each member as the KafkaUser whose rights are members.grants (not a right more)."""
    from broker.kafka.members import grants

    base = DEPLOY / "k8s" / "base"
    kafka = next(d for d in yaml.safe_load_all((base / "kafka.yaml").read_text()) if d["kind"] == "Kafka")
    spec = kafka["spec"]["kafka"]
    assert all(listener["tls"] and listener["authentication"]["type"] == "scram-sha-512"
               for listener in spec["listeners"]), spec["listeners"]  # fmt: skip
    assert spec["authorization"] == {"type": "simple", "superUsers": ["ndxp"]}
    users = {d["metadata"]["name"]: d for d in yaml.safe_load_all((base / "users.yaml").read_text()) if d}
    assert "authorization" not in users["ndxp"]["spec"], "the super user needs no ACLs"
    settings = Settings.from_env({})
    for provider in ("bca", "tnmt", "bhxh"):
        rules = users[f"member-{provider}"]["spec"]["authorization"]["acls"]
        given = {(r["resource"]["type"], r["resource"]["name"], r["resource"]["patternType"], op)
                 for r in rules for op in r["operations"]}  # fmt: skip
        assert given == {(g.resource, g.name, "prefix" if g.prefix else "literal", g.operation)
                         for g in grants(settings, provider)}, provider  # fmt: skip
        assert all(r["type"] == "allow" for r in rules)


def _known_keys() -> set[str]:
    return {k for k in Settings.env_names() if k.startswith(PREFIX)}


def _compose_environments() -> Iterator[tuple[str, dict[str, str]]]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        if str(service.get("image", "")).startswith("ndxp"):
            yield f"compose {name}", {k: str(v) for k, v in service.get("environment", {}).items()}


def _k8s_environments() -> Iterator[tuple[str, dict[str, str]]]:
    base = DEPLOY / "k8s" / "base"
    config = yaml.safe_load((base / "config.yaml").read_text())["data"]
    for path in sorted(base.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                env = dict(config)
                for item in container.get("env", []):
                    source = item.get("valueFrom", {})
                    env[item["name"]] = item.get("value", "from-a-secret" if "secretKeyRef" in source
                                                 else "pod-name-from-the-downward-api")  # fmt: skip
                yield f"k8s {doc['metadata']['name']}", env


def test_every_part_is_given_an_environment_the_platform_accepts() -> None:
    known = _known_keys()
    assert {"NDXP_KAFKA_BOOTSTRAP", "NDXP_INSTANCE_ID", "NDXP_EXCHANGES_TOPIC"} <= known
    parts = [*_compose_environments(), *_k8s_environments()]
    assert len(parts) >= 10, parts
    for part, env in parts:
        # NDXP_BINDING_<PROVIDER>_<NAME>: bound services' references, read by the adapters.
        unknown = {k for k in env if k.startswith(PREFIX) and not k.startswith("NDXP_BINDING_")} - known
        assert not unknown, f"{part}: unknown settings {sorted(unknown)}"
        assert env.get("NDXP_KAFKA_BOOTSTRAP"), f"{part}: no NDXP_KAFKA_BOOTSTRAP"
        settings = Settings.from_env(env)
        if part.startswith("k8s") and settings.kafka_security_protocol.startswith("SASL"):
            assert env["NDXP_KAFKA_SASL_PASSWORD"] == "from-a-secret", f"{part}: Kafka's password inline"
        assert settings.internal_host == "0.0.0.0", f"{part}: metrics would listen on loopback only"
