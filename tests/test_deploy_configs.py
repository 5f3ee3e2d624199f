"""Static checks of the operator configs in deploy/: Docker Compose, Kubernetes, systemd.

No Docker engine, cluster or systemd host is needed: the files are parsed and checked against the
code they run. Every ``orchestrator <subcommand> ...`` they contain is parsed by the real click
command (so a renamed option or a bad value fails here), every ``ORCH_*`` name must be a settings
field, and each config's environment is loaded through the real ``Settings``.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import click
import pytest
from pydantic import BaseModel

from orchestrator.cli import main
from orchestrator.embedded.processes import flower_argv
from workers.settings import Settings

# PyYAML is not a runtime dependency; the test extra should carry it (and types-PyYAML).
yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse deploy/*.yaml")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
README = DEPLOY / "README.md"

# What an operator exports before `docker compose up` (see docker-compose.yml).
COMPOSE_ENV = {"REDIS_PASSWORD": "0123abcd", "FLOWER_BASIC_AUTH": "admin:s3cret"}
# Optional extras in deploy/k8s that the Kustomization deliberately leaves out.
K8S_NOT_IN_KUSTOMIZATION = {"secret.example.yaml", "keda-scaledobject.yaml", "worker-gpu.yaml"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
SHELL_SEPARATORS = {"&&", "||", ";", "|", "&"}


# -- helpers: commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """One ``orchestrator SUBCOMMAND ARGS...`` found in a config."""

    where: str
    argv: tuple[str, ...]  # the subcommand and its arguments

    @property
    def sub(self) -> str:
        return self.argv[0]

    def parse(self) -> click.Context:
        """Parse with the real click command: unknown subcommands, options or bad values fail."""
        command = main.commands.get(self.sub)
        if command is None:
            pytest.fail(
                f"{self.where}: `orchestrator {self.sub}` is not a subcommand of the CLI "
                f"(it has {sorted(main.commands)})"
            )
        try:
            return command.make_context(self.sub, list(self.argv[1:]))
        except click.ClickException as exc:
            shown = " ".join(self.argv)
            pytest.fail(f"{self.where}: `orchestrator {shown}`: {exc.format_message()}")


def shell_words(argv: list[str]) -> list[str]:
    """The words a command runs: the script of ``sh -c SCRIPT`` split like a shell would."""
    if len(argv) >= 3 and Path(argv[0]).name in {"sh", "bash"} and argv[1] == "-c":
        return shlex.split(argv[2])
    return argv


def find_invocations(words: list[str], where: str) -> list[Invocation]:
    """``orchestrator`` at a command position (first word, after exec or a shell operator, or
    after a celery-orchestrator image name in ``docker run``), with its arguments."""
    found = []
    for i, word in enumerate(words):
        if Path(word).name != "orchestrator" or i + 1 >= len(words):
            continue
        before = words[i - 1] if i else ""
        if i == 0 or before == "exec" or before in SHELL_SEPARATORS or "orchestrator:" in before:
            args = []
            for arg in words[i + 1 :]:
                if arg in SHELL_SEPARATORS:
                    break
                args.append(arg)
            found.append(Invocation(where, tuple(args)))
    return found


def node_pattern(hostname: str) -> str:
    """A Celery node name with the host placeholders of each config made comparable."""
    for pod in ("$(POD_NAME)", "${POD_NAME}", "$POD_NAME"):
        hostname = hostname.replace(pod, "{pod}")
    for host in ("${HOSTNAME}", "$HOSTNAME", "%h"):
        hostname = hostname.replace(host, "{host}")
    return hostname


def queues_of(ctx: click.Context) -> set[str] | None:
    """Queues a worker consumes, or None when it consumes every queue of its agents."""
    queues = ctx.params["queues"]
    return set(queues.split(",")) if queues else None


# -- helpers: settings ------------------------------------------------------------------------


def setting_exists(env_name: str) -> bool:
    """Whether ORCH_A__B names the field ``a.b`` of Settings (``__`` descends into sections)."""
    if not env_name.startswith("ORCH_"):
        return False
    model: type[BaseModel] = Settings
    parts = env_name.removeprefix("ORCH_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            section = field.annotation
            if not (isinstance(section, type) and issubclass(section, BaseModel)):
                return False
            model = section
    return True


def load_settings(env: Mapping[str, str], where: str) -> Settings:
    """Settings as a process with exactly this environment would load them."""
    unknown = sorted(k for k in env if k.startswith("ORCH_") and not setting_exists(k))
    assert not unknown, f"{where}: not settings fields: {unknown}"
    orch = {k: v for k, v in env.items() if k.startswith("ORCH_")}
    with mock.patch.dict(os.environ, orch, clear=True):
        try:
            return Settings()
        except Exception as exc:
            pytest.fail(f"{where}: its ORCH_* environment does not load: {exc}")


def check_agent_modules(settings: Settings, where: str) -> None:
    assert settings.agent_modules, f"{where}: ORCH_AGENT_MODULES is empty"
    for module in settings.agent_modules:
        assert importlib.util.find_spec(module) is not None, f"{where}: cannot import {module}"


def shutdown_budget_s(settings: Settings) -> float:
    """Longest a running task can keep a warm shutdown waiting: deadline plus cancel grace."""
    return settings.max_deadline_s + settings.cancel.grace_s


def duration_s(text: str | int | float) -> float:
    """Seconds of a Compose or systemd duration ('660s', '11m', '1h 2min', '90')."""
    if isinstance(text, int | float):
        return float(text)
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    assert parts and all(unit in units for _, unit in parts), f"unparsable duration {text!r}"
    return sum(float(n) * units[unit] for n, unit in parts)


def memory_bytes(text: str) -> int:
    """Bytes of a Kubernetes quantity ('1Gi') or a Redis memory size ('768mb')."""
    units = {
        "": 1,
        "k": 1000,
        "kb": 1024,
        "m": 1000**2,
        "mb": 1024**2,
        "g": 1000**3,
        "gb": 1024**3,
        "ki": 1024,
        "mi": 1024**2,
        "gi": 1024**3,
    }
    match = re.fullmatch(r"(\d+)([a-z]*)", str(text).strip().lower())
    assert match and match.group(2) in units, f"unparsable memory size {text!r}"
    return int(match.group(1)) * units[match.group(2)]


# -- helpers: Docker Compose ------------------------------------------------------------------


class MissingVariable(Exception):
    """A ``${VAR:?message}`` whose variable is unset: Compose refuses to start."""


_COMPOSE_VAR = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation, applied to every string of a loaded file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        unset = current is None or (current == "" and op is not None and op.startswith(":"))
        if op and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return current or ""

    return _COMPOSE_VAR.sub(one, value)


@cache
def compose_raw() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Compose would see it with these variables exported."""
    result = interpolate(compose_raw(), COMPOSE_ENV if env is None else env)
    assert isinstance(result, dict)
    return result


def compose_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def compose_argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def compose_healthcheck_words(service: dict[str, Any]) -> list[str]:
    test = service.get("healthcheck", {}).get("test")
    if test is None:
        return []
    if isinstance(test, str):
        return shlex.split(test)
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1])
    assert test[0] == "CMD", f"unknown healthcheck form {test[0]!r}"
    return [str(t) for t in test[1:]]


def compose_invocations() -> Iterator[Invocation]:
    for name, service in compose_services().items():
        yield from find_invocations(compose_argv(service.get("command")), f"compose {name}.command")
        yield from find_invocations(
            compose_healthcheck_words(service), f"compose {name}.healthcheck"
        )


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def compose_main_invocation(name: str) -> Invocation:
    service = compose_services()[name]
    found = find_invocations(compose_argv(service.get("command")), f"compose {name}.command")
    assert len(found) == 1, f"compose {name}: expected one orchestrator command, got {found}"
    return found[0]


# -- helpers: Kubernetes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    path: Path
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def name(self) -> str:
        return str(self.body.get("metadata", {}).get("name"))

    @property
    def where(self) -> str:
        return f"{self.path.name} {self.kind}/{self.name}"


@cache
def k8s_docs() -> tuple[Doc, ...]:
    docs = []
    for path in sorted(K8S.glob("*.y*ml")):
        if path.name == "kustomization.yaml":
            continue
        for body in yaml.safe_load_all(path.read_text()):
            if body is not None:
                assert isinstance(body, dict), f"{path.name}: a document is not a mapping"
                docs.append(Doc(path, body))
    return tuple(docs)


def k8s_of_kind(kind: str) -> list[Doc]:
    return [d for d in k8s_docs() if d.kind == kind]


def workloads() -> list[Doc]:
    return [d for d in k8s_docs() if d.kind in WORKLOAD_KINDS]


def pod_template(doc: Doc) -> dict[str, Any]:
    template = doc.body["spec"]["template"]
    assert isinstance(template, dict)
    return template


def containers(doc: Doc) -> list[dict[str, Any]]:
    spec = pod_template(doc)["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def secret_values() -> dict[tuple[str, str], str]:
    values = {}
    for doc in k8s_of_kind("Secret"):
        for key, value in (doc.body.get("stringData") or {}).items():
            values[(doc.name, key)] = str(value)
    return values


def configmap_values() -> dict[str, dict[str, str]]:
    return {
        d.name: {k: str(v) for k, v in (d.body.get("data") or {}).items()}
        for d in k8s_of_kind("ConfigMap")
    }


_K8S_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(container: dict[str, Any], where: str) -> dict[str, str]:
    """The environment the container gets, with the example Secret's values and $(VAR) expanded
    the way Kubernetes does (only variables defined earlier)."""
    secrets, configmaps = secret_values(), configmap_values()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        assert ref, f"{where}: envFrom without configMapRef/secretRef"
        if "configMapRef" in source:
            assert ref["name"] in configmaps, f"{where}: no ConfigMap {ref['name']!r}"
            env.update(configmaps[ref["name"]])
        else:
            env.update({k: v for (name, k), v in secrets.items() if name == ref["name"]})
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = _K8S_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), str(item["value"]))
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            key = (ref["name"], ref["key"])
            assert key in secrets, f"{where}: {name} refers to missing Secret key {key}"
            env[name] = secrets[key]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            assert ref["key"] in configmaps.get(ref["name"], {}), f"{where}: missing {ref}"
            env[name] = configmaps[ref["name"]][ref["key"]]
        else:
            env[name] = f"<{name}>"  # fieldRef / resourceFieldRef: known only at run time
    return env


def container_invocations(container: dict[str, Any], where: str) -> list[Invocation]:
    argv = [str(a) for a in [*container.get("command", []), *container.get("args", [])]]
    return find_invocations(shell_words(argv), where)


def probe_invocations(probe: dict[str, Any], where: str) -> list[Invocation]:
    command = probe.get("exec", {}).get("command")
    return find_invocations(shell_words([str(c) for c in command]), where) if command else []


def k8s_invocations() -> Iterator[Invocation]:
    for doc in workloads():
        for c in containers(doc):
            where = f"{doc.where} container {c['name']}"
            yield from container_invocations(c, where)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:
                    yield from probe_invocations(c[probe], f"{where} {probe}")


def orchestrator_containers() -> Iterator[tuple[Doc, dict[str, Any], Invocation]]:
    """Containers whose main command is `orchestrator ...`, with that invocation."""
    for doc in workloads():
        for c in containers(doc):
            found = container_invocations(c, f"{doc.where} container {c['name']}")
            if found:
                assert len(found) == 1, f"{doc.where}: one orchestrator command per container"
                yield doc, c, found[0]


def k8s_worker_pools() -> list[tuple[Doc, click.Context]]:
    return [(doc, inv.parse()) for doc, _, inv in orchestrator_containers() if inv.sub == "worker"]


# -- helpers: systemd -------------------------------------------------------------------------


def unit_files() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";")
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(), source=str(path))
    return parser


def unit_values(path: Path, section: str, key: str) -> list[str]:
    """Every value of a key that systemd allows to repeat (Environment=, EnvironmentFile=)."""
    values, current = [], None
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name}: bad line {line!r}"
            env[key] = value
    return env


def unit_environments(path: Path) -> list[dict[str, str]]:
    """The environments a unit can run with: its Environment= defaults, then each example file
    that may stand in for an optional EnvironmentFile=- of it."""
    base: dict[str, str] = {}
    for item in unit_values(path, "Service", "Environment"):
        for word in shlex.split(item):
            key, _, value = word.partition("=")
            base[key] = value
    base.update(read_env_file(SYSTEMD / "env.example"))
    variants = [base]
    optional = [f for f in unit_values(path, "Service", "EnvironmentFile") if f.startswith("-")]
    if optional:
        variants += [{**base, **read_env_file(p)} for p in SYSTEMD.glob("worker*.env.example")]
    return variants


def expand_exec(line: str, env: Mapping[str, str]) -> list[str]:
    """ExecStart= words: $VAR splits into words, ${VAR} stays one (specifiers like %i stay)."""
    words: list[str] = []
    for word in shlex.split(line):
        plain = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if plain:
            words += env.get(plain.group(1), "").split()
        else:
            words.append(
                re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word)
            )
    return words


def systemd_invocations() -> Iterator[Invocation]:
    for path in unit_files():
        for exec_start in unit_values(path, "Service", "ExecStart"):
            for i, env in enumerate(unit_environments(path)):
                yield from find_invocations(
                    expand_exec(exec_start, env), f"{path.name} ExecStart (environment {i})"
                )


# -- helpers: README --------------------------------------------------------------------------


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def readme_invocations() -> Iterator[Invocation]:
    for block in readme_blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            yield from find_invocations(shlex.split(line, comments=True), "README.md sh block")


def all_invocations() -> list[Invocation]:
    return [
        *compose_invocations(),
        *k8s_invocations(),
        *systemd_invocations(),
        *readme_invocations(),
    ]


# -- the checkers can fail --------------------------------------------------------------------


def test_the_checkers_reject_bad_names_and_values() -> None:
    assert setting_exists("ORCH_BROKER_URL")
    assert setting_exists("ORCH_FLOWER__BASIC_AUTH")
    assert setting_exists("ORCH_CANCEL__GRACE_S")
    assert not setting_exists("ORCH_FLOWER__BASICAUTH")
    assert not setting_exists("ORCH_BROKER_URL__X")  # a plain field has no sections
    assert not setting_exists("BROKER_URL")
    for bad in (
        ("wrker",),
        ("worker", "--concurency", "2"),
        ("worker", "--pool", "gevent"),
        ("check", "--role", "flower"),
        ("worker", "--concurrency", "two"),
    ):
        with pytest.raises(pytest.fail.Exception):
            Invocation("self-test", bad).parse()
    assert find_invocations(["sh", "-c", "exec orchestrator check"], "x") == []  # needs splitting
    assert [
        i.argv for i in find_invocations(shell_words(["sh", "-c", "exec orchestrator check"]), "x")
    ] == [("check",)]
    with pytest.raises(MissingVariable):
        interpolate("${FLOWER_BASIC_AUTH:?set it}", {})
    assert interpolate("a$$b ${X:-d} ${Y}", {"Y": "y"}) == "a$b d y"
    assert duration_s("1m30s") == 90 and duration_s("660s") == 660 and duration_s(5) == 5
    assert memory_bytes("768mb") < memory_bytes("1Gi")


# -- every config, against the CLI and the settings --------------------------------------------


def test_configs_contain_the_expected_orchestrator_commands() -> None:
    subs = {i.sub for i in all_invocations()}
    assert {"worker", "coordinator", "flower", "check"} <= subs, subs


@pytest.mark.parametrize("source", ["compose", "k8s", "systemd", "readme"])
def test_every_orchestrator_command_parses_with_the_real_cli(source: str) -> None:
    found = {
        "compose": compose_invocations,
        "k8s": k8s_invocations,
        "systemd": systemd_invocations,
        "readme": readme_invocations,
    }[source]()
    invocations = list(found)
    assert invocations, f"no orchestrator commands found in {source}"
    for inv in invocations:
        inv.parse()


def test_inline_orchestrator_commands_in_readme_name_real_subcommands_and_options() -> None:
    spans = re.findall(r"`orchestrator ([^`]+)`", README.read_text())
    assert spans
    for span in spans:
        words = span.split()
        command = main.commands.get(words[0])
        assert command is not None, f"README: `orchestrator {span}`: no subcommand {words[0]!r}"
        known = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
        for word in words[1:]:
            option = word.strip("[]").split("=", 1)[0]
            if option.startswith("--"):
                assert option in known, f"README: `orchestrator {span}`: no option {option}"


def test_every_orch_variable_named_anywhere_in_deploy_is_a_settings_field() -> None:
    names: set[str] = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            names |= set(re.findall(r"\bORCH_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    assert {
        "ORCH_BROKER_URL",
        "ORCH_AGENT_MODULES",
        "ORCH_FLOWER__BASIC_AUTH",
        "ORCH_MAX_DEADLINE_S",
    } <= names
    unknown = sorted(n for n in names if not setting_exists(n))
    assert not unknown, f"not settings fields: {unknown}"


# -- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_builds_a_non_root_image_of_this_package() -> None:
    ins = dockerfile_instructions()
    froms = [rest.split()[0] for op, rest in ins if op == "FROM"]
    assert froms and froms[-1] == "python:3.11-slim", froms
    runs = " ".join(rest for op, rest in ins if op == "RUN")
    assert re.search(r"pip install (\S+ )*\.(\s|$)", runs), "no `pip install .`"
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, users
    env_words = [w for op, rest in ins if op == "ENV" for w in shlex.split(rest)]
    assert "ORCH_AGENT_MODULES=workers.agents" in env_words
    # Every top-level package the project ships must be copied into the build.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = {w.rstrip("/") for op, rest in ins if op == "COPY" for w in rest.split()}
    assert packages <= copied, f"packages not copied: {packages - copied}"


# -- Docker Compose ---------------------------------------------------------------------------


def test_compose_has_the_four_services_built_from_the_dockerfile() -> None:
    services = compose_services()
    assert set(services) == {"redis", "coordinator", "worker", "flower"}
    for name in ("coordinator", "worker", "flower"):
        build = services[name].get("build")
        assert isinstance(build, dict), f"{name}: no build section"
        dockerfile = (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile == DOCKERFILE.resolve(), f"{name}: builds {dockerfile}"
    assert [compose_main_invocation(n).sub for n in ("coordinator", "worker", "flower")] == [
        "coordinator",
        "worker",
        "flower",
    ]


def test_compose_worker_can_be_scaled() -> None:
    worker = compose_services()["worker"]
    for key in ("container_name", "ports", "hostname"):
        assert key not in worker, f"worker has {key}: `--scale worker=N` would collide"
    ctx = compose_main_invocation("worker").parse()
    assert ctx.params["concurrency"] == 2


def test_compose_redis_is_persistent_noeviction_and_password_protected() -> None:
    redis = compose_services()["redis"]
    assert str(redis["image"]).split(":")[0] in {"redis", "valkey/valkey"}
    words = compose_argv(redis["command"])
    pairs = dict(zip(words[1::2], words[2::2], strict=False))
    assert words[0] in {"redis-server", "valkey-server"}
    assert pairs.get("--appendonly") == "yes"
    assert pairs.get("--maxmemory-policy") == "noeviction"
    assert pairs.get("--requirepass") == COMPOSE_ENV["REDIS_PASSWORD"]
    assert "healthcheck" in redis
    assert any(str(v).endswith(":/data") for v in redis.get("volumes", [])), "no volume on /data"
    with pytest.raises(MissingVariable):
        compose({k: v for k, v in COMPOSE_ENV.items() if k != "REDIS_PASSWORD"})


def test_compose_processes_reach_redis_with_its_password() -> None:
    services = compose_services()
    for name in ("coordinator", "worker", "flower"):
        service = services[name]
        url = urlsplit(compose_env(service)["ORCH_BROKER_URL"])
        assert url.scheme in {"redis", "rediss"}
        assert url.hostname == "redis" and url.port == 6379, f"{name}: broker {url.netloc}"
        assert url.password == COMPOSE_ENV["REDIS_PASSWORD"], f"{name}: password not from env"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        settings = load_settings(compose_env(service), f"compose {name}")
        check_agent_modules(settings, f"compose {name}")


def test_compose_flower_requires_basic_auth_and_stays_private() -> None:
    flower = compose_services()["flower"]
    env = compose_env(flower)
    assert env["ORCH_FLOWER__BASIC_AUTH"] == COMPOSE_ENV["FLOWER_BASIC_AUTH"]
    with pytest.raises(MissingVariable):  # `docker compose up` refuses to start without it
        compose({k: v for k, v in COMPOSE_ENV.items() if k != "FLOWER_BASIC_AUTH"})
    ctx = compose_main_invocation("flower").parse()
    assert ctx.params["address"] == "0.0.0.0"
    argv = flower_argv(
        load_settings(env, "compose flower"), port=ctx.params["port"], address=ctx.params["address"]
    )
    assert f"--basic-auth={COMPOSE_ENV['FLOWER_BASIC_AUTH']}" in argv
    # /metrics and /healthcheck are unauthenticated: publish on the host's loopback only.
    for port in flower.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"flower published on {port}"


@pytest.mark.parametrize("name", ["coordinator", "worker"])
def test_compose_healthchecks_probe_their_own_node(name: str) -> None:
    service = compose_services()[name]
    process = compose_main_invocation(name).parse()
    checks = find_invocations(compose_healthcheck_words(service), f"compose {name}.healthcheck")
    assert len(checks) == 1 and checks[0].sub == "check"
    check = checks[0].parse()
    assert check.params["role"] == name  # `check --role` names roles like the subcommands
    assert node_pattern(check.params["hostname"]) == node_pattern(process.params["hostname"])


def test_compose_worker_stop_grace_covers_the_longest_task() -> None:
    worker = compose_services()["worker"]
    settings = load_settings(compose_env(worker), "compose worker")
    assert duration_s(worker["stop_grace_period"]) >= shutdown_budget_s(settings)


@pytest.mark.parametrize("name", ["redis", "coordinator", "worker", "flower"])
def test_compose_containers_are_locked_down_as_in_kubernetes(name: str) -> None:
    """What deploy/README.md (Security) says holds for every container, in Compose too."""
    service = compose_services()[name]
    assert service.get("read_only") is True, f"compose {name}: root file system is writable"
    assert service.get("cap_drop") == ["ALL"], f"compose {name}: keeps capabilities"
    assert "no-new-privileges:true" in service.get("security_opt", []), name
    workload = next(d for d in workloads() if d.name.removeprefix("orchestrator-") == name)
    pod = pod_template(workload)["spec"]["securityContext"]
    assert service.get("user", "10001:10001") == f"{pod['runAsUser']}:{pod['runAsGroup']}"
    for container in containers(workload):
        # What Kubernetes gives as a writable emptyDir, Compose gives as a tmpfs (not /data).
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == [
            "ALL"
        ]
        volumes = {v["name"]: v for v in pod_template(workload)["spec"].get("volumes", [])}
        scratch = {
            m["mountPath"]
            for m in container.get("volumeMounts", [])
            if "emptyDir" in volumes.get(m["name"], {})
        }
        assert scratch <= set(service.get("tmpfs", [])), f"compose {name}: no tmpfs {scratch}"


def test_dockerfile_user_is_the_one_compose_assumes() -> None:
    users = [args for op, args in dockerfile_instructions() if op == "USER"]
    assert users[-1] == "10001:10001"  # compose services without `user:` run as this


def test_readme_docker_run_is_locked_down_too() -> None:
    runs = [
        shlex.split(line)
        for block in readme_blocks("sh")
        for line in block.replace("\\\n", " ").splitlines()
        if "docker run" in line
    ]
    assert runs, "README: no docker run example"
    for words in runs:
        for option in ("--read-only", "--cap-drop", "--security-opt", "--tmpfs"):
            assert option in words, f"README docker run without {option}"
        assert words[words.index("--cap-drop") + 1] == "ALL"
        assert words[words.index("--security-opt") + 1] == "no-new-privileges"
        assert words[words.index("--tmpfs") + 1] == "/tmp"


def test_deploy_files_describe_deadlines_as_swept_not_as_eta_timers() -> None:
    stale = re.compile(r"\bETA\b|deadline timers?|fires? (their|its) deadlines", re.I)
    found = [
        f"{path.relative_to(DEPLOY)}: {m.group(0)}"
        for path in DEPLOY.rglob("*")
        if path.is_file()
        for m in stale.finditer(path.read_text())
    ]
    assert not found, found
    assert "sweeper" in README.read_text()


# -- Kubernetes -------------------------------------------------------------------------------


def test_every_k8s_document_is_named_and_namespace_less() -> None:
    docs = k8s_docs()
    assert len(docs) >= 8
    for doc in docs:
        assert doc.body.get("apiVersion"), f"{doc.path.name}: no apiVersion"
        assert doc.body.get("kind"), f"{doc.path.name}: no kind"
        assert doc.body.get("metadata", {}).get("name"), f"{doc.path.name}: no metadata.name"
        assert "namespace" not in doc.body["metadata"], f"{doc.where}: has a namespace"
    names = [(d.kind, d.name) for d in docs]
    assert len(names) == len(set(names)), "duplicate kind/name"


def test_k8s_workloads_select_their_own_pods_and_run_images_with_commands() -> None:
    assert {d.name for d in k8s_of_kind("Deployment")} >= {
        "orchestrator-coordinator",
        "orchestrator-worker",
        "orchestrator-worker-gpu",
        "orchestrator-flower",
    }
    for doc in workloads():
        selector = doc.body["spec"]["selector"]["matchLabels"]
        labels = pod_template(doc)["metadata"]["labels"]
        assert selector and selector.items() <= labels.items(), f"{doc.where}: selector mismatch"
        for c in containers(doc):
            assert c.get("image"), f"{doc.where}: container {c['name']} has no image"
            assert c.get("command"), f"{doc.where}: container {c['name']} has no command"
            assert c.get("resources", {}).get("limits", {}).get("memory"), (
                f"{doc.where}: container {c['name']} has no memory limit"
            )


def test_k8s_services_route_to_a_workload_port() -> None:
    services = k8s_of_kind("Service")
    assert {s.name for s in services} >= {"redis", "orchestrator-flower"}
    for svc in services:
        selector = svc.body["spec"]["selector"]
        targets = [
            d
            for d in workloads()
            if selector.items() <= pod_template(d)["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, f"{svc.where}: selects {[t.name for t in targets]}"
        ports = [p for c in containers(targets[0]) for p in c.get("ports", [])]
        for port in svc.body["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(target in (p.get("name"), p["containerPort"]) for p in ports), (
                f"{svc.where}: targetPort {target} is not a container port"
            )
        assert svc.body["spec"].get("type", "ClusterIP") == "ClusterIP", (
            f"{svc.where}: exposed outside the cluster"
        )


def test_k8s_secret_is_an_example_and_every_reference_exists() -> None:
    secrets = k8s_of_kind("Secret")
    assert [s.path.name for s in secrets] == ["secret.example.yaml"]
    assert "data" not in secrets[0].body, "use stringData placeholders, never encoded values"
    values = secret_values()
    assert values and all("change-me" in v for v in values.values()), values
    for doc in workloads():
        for c in containers(doc):
            container_env(c, f"{doc.where} container {c['name']}")  # asserts refs exist
    for auth in k8s_of_kind("TriggerAuthentication"):
        for ref in auth.body["spec"]["secretTargetRef"]:
            assert (ref["name"], ref["key"]) in values, f"{auth.where}: missing {ref}"


def test_k8s_kustomization_lists_the_core_files_but_not_the_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = set(kustomization["resources"])
    for name in resources:
        assert (K8S / name).is_file(), f"kustomization lists missing {name}"
    assert "secret.example.yaml" not in resources
    every = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert every - resources == K8S_NOT_IN_KUSTOMIZATION


def test_k8s_orchestrator_containers_load_their_settings_and_reach_redis() -> None:
    found = list(orchestrator_containers())
    assert {inv.sub for _, _, inv in found} == {"coordinator", "worker", "flower"}
    services = {s.name: s for s in k8s_of_kind("Service")}
    requirepass = redis_password_k8s()
    for doc, c, _ in found:
        where = f"{doc.where} container {c['name']}"
        env = container_env(c, where)
        settings = load_settings(env, where)
        check_agent_modules(settings, where)
        url = urlsplit(settings.require_broker())
        assert url.hostname in services, f"{where}: broker host {url.hostname} is no Service"
        service_ports = [p["port"] for p in services[url.hostname].body["spec"]["ports"]]
        assert url.port in service_ports, f"{where}: broker port {url.port}"
        assert url.password == requirepass, f"{where}: broker password is not Redis's"


@pytest.mark.parametrize("sub", ["worker", "coordinator"])
def test_k8s_probes_check_the_pods_own_node(sub: str) -> None:
    pods = [(d, c, inv) for d, c, inv in orchestrator_containers() if inv.sub == sub]
    assert pods
    for doc, c, inv in pods:
        process = inv.parse()
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe == "startupProbe" and probe not in c:
                continue
            assert probe in c, f"{doc.where}: no {probe}"
            checks = probe_invocations(c[probe], f"{doc.where} {probe}")
            assert [i.sub for i in checks] == ["check"], f"{doc.where} {probe}: {checks}"
            check = checks[0].parse()
            assert check.params["role"] == sub  # roles are named like the subcommands
            assert node_pattern(check.params["hostname"]) == node_pattern(
                process.params["hostname"]
            ), f"{doc.where} {probe}: checks another node"
            # Probes start Python and ask Redis: a 1 s default timeout would flap.
            assert c[probe].get("timeoutSeconds", 1) >= 5, f"{doc.where} {probe}: timeout"


def test_k8s_workers_have_time_for_a_warm_shutdown() -> None:
    pools = [(d, c) for d, c, inv in orchestrator_containers() if inv.sub == "worker"]
    assert pools
    for doc, c in pools:
        where = f"{doc.where} container {c['name']}"
        settings = load_settings(container_env(c, where), where)
        grace = pod_template(doc)["spec"].get("terminationGracePeriodSeconds", 30)
        assert grace >= shutdown_budget_s(settings), f"{where}: grace {grace}s"


def test_k8s_dedicated_gpu_pool_and_general_pool_do_not_share_queues() -> None:
    pools = {doc.name: queues_of(ctx) for doc, ctx in k8s_worker_pools()}
    assert pools.get("orchestrator-worker-gpu") == {"gpu"}
    # A worker without --queues would consume every agent queue, the gpu one included.
    assert all(queues is not None for queues in pools.values()), pools
    seen: set[str] = set()
    for queues in pools.values():
        assert queues is not None and not queues & seen, f"queues consumed twice: {pools}"
        seen |= queues


def redis_password_k8s() -> str:
    redis = [
        d
        for d in workloads()
        if any(str(c["image"]).split(":")[0] in {"redis", "valkey/valkey"} for c in containers(d))
    ]
    assert len(redis) == 1, "expected one Redis workload"
    c = containers(redis[0])[0]
    env = container_env(c, redis[0].where)
    words = [
        _K8S_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), str(w))
        for w in [*c.get("command", []), *c.get("args", [])]
    ]
    pairs = dict(zip(words[1::2], words[2::2], strict=False))
    assert "--requirepass" in pairs, "Redis runs without a password"
    return pairs["--requirepass"]


def test_k8s_redis_is_persistent_noeviction_and_password_protected() -> None:
    redis = [
        d
        for d in workloads()
        if any(str(c["image"]).split(":")[0] in {"redis", "valkey/valkey"} for c in containers(d))
    ]
    assert len(redis) == 1
    doc = redis[0]
    c = containers(doc)[0]
    words = [str(w) for w in [*c.get("command", []), *c.get("args", [])]]
    pairs = dict(zip(words[1::2], words[2::2], strict=False))
    assert pairs.get("--appendonly") == "yes"
    assert pairs.get("--maxmemory-policy") == "noeviction"
    # The password comes from the Secret, never from the manifest.
    password_var = _K8S_VAR.fullmatch(pairs.get("--requirepass", ""))
    assert password_var, "--requirepass is not $(VAR)"
    env_item = next(e for e in c["env"] if e["name"] == password_var.group(1))
    assert "secretKeyRef" in env_item["valueFrom"]
    assert redis_password_k8s() == secret_values()[("orchestrator-secrets", "redis-password")]
    # noeviction fails writes at maxmemory; that must come before the kernel's OOM kill.
    assert memory_bytes(pairs["--maxmemory"]) < memory_bytes(c["resources"]["limits"]["memory"])
    mounts = {m["name"] for m in c.get("volumeMounts", []) if m["mountPath"] == pairs["--dir"]}
    claims = {t["metadata"]["name"] for t in doc.body["spec"].get("volumeClaimTemplates", [])}
    claims |= {
        v["name"]
        for v in pod_template(doc)["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    assert mounts & claims, "Redis data directory is not on a PersistentVolumeClaim"


def test_k8s_flower_uses_basic_auth_from_the_secret() -> None:
    flowers = [(d, c, inv) for d, c, inv in orchestrator_containers() if inv.sub == "flower"]
    assert len(flowers) == 1
    doc, c, inv = flowers[0]
    item = next(e for e in c["env"] if e["name"] == "ORCH_FLOWER__BASIC_AUTH")
    assert "secretKeyRef" in item["valueFrom"], "Flower credentials must come from a Secret"
    ctx = inv.parse()
    settings = load_settings(container_env(c, doc.where), doc.where)
    argv = flower_argv(settings, port=ctx.params["port"], address=ctx.params["address"])
    assert any(a.startswith("--basic-auth=") for a in argv)
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthcheck"  # the one path without auth


def test_k8s_keda_scales_the_worker_on_its_own_queue() -> None:
    scaled = k8s_of_kind("ScaledObject")
    assert len(scaled) == 1
    spec = scaled[0].body["spec"]
    pools = {doc.name: ctx for doc, ctx in k8s_worker_pools()}
    target = spec["scaleTargetRef"]["name"]
    assert target in pools, f"ScaledObject targets {target}, not a worker Deployment"
    # Pre-flight refuses a run on a queue that no live worker consumes: never scale to zero.
    assert spec.get("minReplicaCount", 0) >= 1
    triggers = spec["triggers"]
    assert [t["type"] for t in triggers] == ["redis"]
    meta = triggers[0]["metadata"]
    assert {meta["listName"]} == queues_of(pools[target])
    assert int(meta["listLength"]) >= 1
    host, _, port = meta["address"].partition(":")
    assert host.split(".")[0] in {s.name for s in k8s_of_kind("Service")} and port == "6379"
    auth = triggers[0]["authenticationRef"]["name"]
    assert auth in {d.name for d in k8s_of_kind("TriggerAuthentication")}


# -- systemd ----------------------------------------------------------------------------------


def test_systemd_units_exist() -> None:
    assert [p.name for p in unit_files()] == [
        "orchestrator-coordinator.service",
        "orchestrator-flower.service",
        "orchestrator-worker@.service",
    ]
    assert (SYSTEMD / "env.example").is_file()


@pytest.mark.parametrize(
    "name",
    [
        "orchestrator-coordinator.service",
        "orchestrator-flower.service",
        "orchestrator-worker@.service",
    ],
)
def test_systemd_unit_runs_orchestrator_as_a_dedicated_user(name: str) -> None:
    path = SYSTEMD / name
    unit = read_unit(path)
    assert {"Unit", "Service", "Install"} <= set(unit.sections()), unit.sections()
    service = unit["Service"]
    exec_start = unit_values(path, "Service", "ExecStart")
    assert len(exec_start) == 1
    binary = shlex.split(exec_start[0])[0]
    assert binary.startswith("/") and Path(binary).name == "orchestrator", binary
    assert service.get("User") not in {None, "root", "0"}
    assert service.get("Restart") == "on-failure"
    assert service.get("KillSignal") == "SIGTERM"
    assert "/etc/orchestrator/env" in unit_values(path, "Service", "EnvironmentFile")
    assert unit["Install"].get("WantedBy") == "multi-user.target"
    assert duration_s(service["TimeoutStopSec"]) > 0


def test_systemd_worker_template_names_its_node_after_the_instance() -> None:
    path = SYSTEMD / "orchestrator-worker@.service"
    envs = unit_environments(path)
    assert len(envs) >= 2, "the per-instance example environment was not found"
    for i, env in enumerate(envs):
        found = find_invocations(
            expand_exec(unit_values(path, "Service", "ExecStart")[0], env), f"{path.name} ({i})"
        )
        assert [inv.sub for inv in found] == ["worker"]
        ctx = found[0].parse()
        assert "%i" in ctx.params["hostname"]
    example = find_invocations(
        expand_exec(unit_values(path, "Service", "ExecStart")[0], envs[1]), "example"
    )[0].parse()
    assert queues_of(example) == {"gpu"}


def test_systemd_environment_loads_and_workers_have_time_to_stop() -> None:
    env = read_env_file(SYSTEMD / "env.example")
    settings = load_settings(env, "env.example")
    check_agent_modules(settings, "env.example")
    assert settings.broker_url and "change-me" in settings.broker_url  # a placeholder
    unit = read_unit(SYSTEMD / "orchestrator-worker@.service")["Service"]
    assert duration_s(unit["TimeoutStopSec"]) >= shutdown_budget_s(settings)
    assert unit.get("KillMode") == "mixed", "SIGTERM must reach Celery's main process only"
    flower = find_invocations(
        expand_exec(
            unit_values(SYSTEMD / "orchestrator-flower.service", "Service", "ExecStart")[0], env
        ),
        "flower",
    )[0].parse()
    argv = flower_argv(settings, port=flower.params["port"], address=flower.params["address"])
    assert any(a.startswith("--basic-auth=") for a in argv)
    assert flower.params["address"] == "127.0.0.1"


# -- README -----------------------------------------------------------------------------------


def test_readme_yaml_examples_parse_and_target_real_deployments() -> None:
    blocks = readme_blocks("yaml")
    assert blocks, "README has no yaml examples (the HPA alternative)"
    deployments = {d.name for d in k8s_of_kind("Deployment")}
    for block in blocks:
        doc = yaml.safe_load(block)
        if doc.get("kind") == "HorizontalPodAutoscaler":
            assert doc["spec"]["scaleTargetRef"]["name"] in deployments
