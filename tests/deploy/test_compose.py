"""The Docker deployment, checked without a Docker engine.

The compose files (docker-compose.yml and deploy/pc*.yml) are read with PyYAML and
their variables substituted as compose does (``${VAR:-default}`` and the like; the
machine files with the values of deploy/.env.example). Then every program a service
runs gets its command line parsed by that program's own argparse parser, the start
order (``depends_on``) and the wiring between services (ports, hosts, CP ids, driver
ids, services files, database URL) are checked, and so are the Dockerfile, the
.dockerignore and deploy/ev_port.py. When ``docker compose`` or ``docker-compose`` is
installed, ``config -q`` must accept every file as well.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from decimal import Decimal
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "docker-compose.yml"
PC1 = ROOT / "deploy" / "pc1-kafka-drivers.yml"
PC2 = ROOT / "deploy" / "pc2-central-db.yml"
PC3 = ROOT / "deploy" / "pc3-cp.yml"
MACHINE_FILES = [PC1, PC2, PC3]
COMPOSE_FILES = [BASE, *MACHINE_FILES]
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
EV_PORT = ROOT / "deploy" / "ev_port.py"

PROGRAMS = ("EV_Central", "EV_CP_E", "EV_CP_M", "EV_Driver", "EV_Registry", "EV_RFID", "EV_W")
# What a one-shot service's script may run besides the programs (make-secrets).
SHELL_COMMANDS = ("cp", "if", "fi", "umask", "head")
# Variables the programs read as defaults; cleared so that only the command line and
# the service's own environment count, as in the container.
PROGRAM_ENV = ("EV_KAFKA", "EV_DB", "EV_DATA_DIR", "EV_UI", "EV_CENTRAL_HOST", "EV_ENGINE_HOST",
               "EV_TOPIC_PREFIX", "EV_CP_LOCATION", "EV_CP_PRICE", "EV_LOG_LEVEL")
MIN_SERVICES = 10
ADMIN_COMMANDS = ("drivers", "accounts", "tags", "certificate")  # EV_Central's operator commands a one-shot service runs


def pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python 3.11 or tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def file_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- reading the compose files -------------------------------------------------------

def yaml_module():
    return pytest.importorskip(
        "yaml", reason="PyYAML is not installed (pyyaml, from requirements-dev.txt)")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as compose reads an --env-file (no quotes used in ours)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.DOTALL)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}, ${VAR:+a}."""

    def replace(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        assert braced, f"bad variable ${{{match['braced']}}} in {text!r}"
        name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?"):
            if value is None or (op == ":?" and not value):
                raise AssertionError(f"${{{name}}} is required ({arg}) in {text!r}")
            return value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return "" if value is None else arg
        return value or ""

    return _VARIABLE.sub(replace, text)


def substitute(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [substitute(item, env) for item in node]
    if isinstance(node, dict):
        return {key: substitute(value, env) for key, value in node.items()}
    return node


def env_for(path: Path) -> dict[str, str]:
    """The variables a compose file is used with: none for one machine, .env.example for the others."""
    return read_env_file(ENV_EXAMPLE) if path in MACHINE_FILES else {}


def load(path: Path) -> dict:
    yaml = yaml_module()
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{path}: no services"
    return substitute(data, env_for(path))


def as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(item) for item in value]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def expand_shell(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m[1] or m[2], ""), text)


def invocations(service: dict) -> list[list[str]]:
    """The command lines a service runs: its entrypoint + command, or each line of a ``sh -c`` script."""
    entrypoint, command = as_list(service.get("entrypoint")), as_list(service.get("command"))
    if entrypoint[:1] == ["sh"] and any(flag.startswith("-") and "c" in flag for flag in entrypoint[1:]):
        assert len(command) == 1, f"a shell script is one string: {command!r}"
        env = environment(service)
        return [shlex.split(expand_shell(line, env)) for line in command[0].splitlines() if line.strip()]
    argv = entrypoint + command
    return [argv] if argv else []


def runs(service: dict, program: str) -> list[list[str]]:
    return [argv for argv in invocations(service) if argv[:1] == [program]]


def flag(argv: list[str], name: str) -> str | None:
    if name in argv:
        return argv[argv.index(name) + 1]
    return None


def services_running(compose: dict, program: str) -> dict[str, list[str]]:
    """{service: argv} of every service whose (single) command line runs ``program`` (not an operator's
    ``EV_Central drivers|accounts|tags`` command)."""
    found = {}
    for name, service in compose["services"].items():
        lines = [argv for argv in runs(service, program) if argv[1:2] not in ([c] for c in ADMIN_COMMANDS)]
        if lines:
            assert len(lines) == 1, f"{name} runs {program} more than once"
            found[name] = lines[0]
    return found


def depends(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def healthcheck_argv(service: dict) -> list[str]:
    test = as_list((service.get("healthcheck") or {}).get("test"))
    assert test[:1] == ["CMD"], f"healthcheck {test!r} is not an exec form"
    return test[1:]


# --- the programs' own parsers ---------------------------------------------------------

@contextlib.contextmanager
def program_env(service_env: dict[str, str]):
    saved = {key: os.environ.get(key) for key in (*PROGRAM_ENV, *service_env)}
    try:
        for key in PROGRAM_ENV:
            os.environ.pop(key, None)
        os.environ.update(service_env)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_program_argv(argv: list[str], service_env: dict[str, str]) -> None:
    """Parse ``argv`` (program name first) as the program does; AssertionError with its message if refused."""
    program, args = argv[0], argv[1:]
    with program_env(service_env):
        if program == "EV_Central" and args[:1] == ["gateway"]:
            from ev_central.gateway.cli import build_gateway_parser as parser_factory

            parser = parser_factory()
            args = args[1:]
        elif program == "EV_Central" and args[:1] and args[0] in ADMIN_COMMANDS:
            from ev_central import cli

            parser = getattr(cli, f"build_{args[0]}_parser")()
            args = args[1:]
        elif program == "EV_Central":
            from ev_central.cli import build_parser as parser_factory

            parser = parser_factory()
        elif program == "EV_CP_E":
            from ev_cp_engine.cli import build_parser as parser_factory

            parser = parser_factory()
        elif program == "EV_CP_M":
            from ev_cp_monitor.cli import build_parser as parser_factory

            parser = parser_factory()
        elif program == "EV_Driver":
            from ev_driver.cli import build_parser as parser_factory

            parser = parser_factory()
        elif program == "EV_Registry":
            from ev_registry.cli import build_serve_parser as parser_factory

            parser = parser_factory()
        elif program == "EV_W":
            from ev_weather.cli import build_parser as parser_factory

            parser = parser_factory()
        else:
            raise AssertionError(f"unknown program {program}")
        errors: list[str] = []

        def error(message: str):
            errors.append(message)
            raise SystemExit(2)

        parser.error = error
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            raise AssertionError(f"{shlex.join(argv)}: {'; '.join(errors) or 'exits'}") from None
    # What each main() checks after parsing.
    if program == "EV_Central" and argv[1:2] == ["drivers"]:
        assert parsed.action not in ("add", "remove") or parsed.driver_id, f"{shlex.join(argv)}: no driver id"
        from ev_common.protocol.fields import Identifier

        if parsed.driver_id:
            Identifier().check(parsed.driver_id)
    if program == "EV_CP_M":
        from ev_common.protocol import Reg

        Reg(parsed.cp_id, parsed.location, parsed.price)


def test_the_argv_checker_refuses_a_flag_the_program_does_not_have():
    with pytest.raises(AssertionError, match="unrecognized arguments: --colour"):
        check_program_argv(["EV_Driver", "--kafka", "kafka:9092", "--driver_id", "D001", "--colour", "red"], {})
    with pytest.raises(AssertionError, match="required"):
        check_program_argv(["EV_CP_M", "--cp_id", "CP001"], {})
    with pytest.raises(AssertionError, match="no driver id"):
        check_program_argv(["EV_Central", "drivers", "add"], {})


def test_interpolation_follows_compose():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $SET $$SET", env) == "x d  d x $SET"
    with pytest.raises(AssertionError, match="required"):
        interpolate("${UNSET:?set it}", env)


# --- every compose file ----------------------------------------------------------------

@pytest.mark.parametrize("path", COMPOSE_FILES, ids=file_id)
def test_compose_file_parses_and_names_its_services(path):
    compose = load(path)
    assert compose["services"], path
    for name, service in compose["services"].items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name), name
        assert "image" in service, f"{name}: no image"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=file_id)
def test_every_command_is_accepted_by_its_program(path):
    compose = load(path)
    checked, problems = 0, []
    for name, service in compose["services"].items():
        if not str(service.get("image", "")).startswith("evcharging:"):
            continue
        lines = invocations(service)
        assert lines, f"{name}: runs nothing (the image's default is --help)"
        for argv in lines:
            if argv[0] == "ev-port" or argv[0] in SHELL_COMMANDS:
                continue
            if argv[0] not in PROGRAMS:
                problems.append(f"{name}: {argv[0]} is not one of {PROGRAMS}")
                continue
            try:
                check_program_argv(argv, environment(service))
                checked += 1
            except (AssertionError, ValueError) as exc:  # ValueError: the protocol refuses an id, location or price
                problems.append(f"{name}: {exc}")
    assert not problems, "\n".join(problems)
    assert checked, f"{path}: no program command found"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=file_id)
def test_program_commands_are_exec_lists(path):
    """A list is run as it is, with no shell to split or expand it (the script of register-drivers aside)."""
    compose = load(path)
    for name, service in compose["services"].items():
        if service.get("entrypoint") is None and "command" in service:
            assert isinstance(service["command"], list), f"{name}: command is a string"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=file_id)
def test_waited_for_services_have_what_is_waited_for(path):
    """service_healthy needs a healthcheck; service_completed_successfully a one-shot (no restart)."""
    compose = load(path)
    services = compose["services"]
    for name, service in services.items():
        for target, condition in depends(service).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert services[target].get("healthcheck", {}).get("test"), f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} restarts"
            assert not services[target].get("profiles"), f"{name} depends on {target}, which is in a profile"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=file_id)
def test_programs_healthchecks_watch_their_own_ports(path):
    compose = load(path)
    for name, argv in services_running(compose, "EV_Central").items():
        assert healthcheck_argv(compose["services"][name]) == ["ev-port", "listening", flag(argv, "--port")]
    for name, argv in services_running(compose, "EV_CP_E").items():
        assert healthcheck_argv(compose["services"][name]) == ["ev-port", "listening", flag(argv, "--port")]
    for name, argv in services_running(compose, "EV_CP_M").items():
        assert healthcheck_argv(compose["services"][name]) == ["ev-port", "connected", flag(argv, "--central_port")]


@pytest.mark.parametrize("path", [BASE, PC3], ids=file_id)
def test_engines_run_unattended(path):
    engines = services_running(load(path), "EV_CP_E")
    assert engines
    for name, argv in engines.items():
        assert "--auto" in argv, name


@pytest.mark.parametrize("path", [BASE, PC3], ids=file_id)
def test_monitors_reach_their_engine_in_the_same_file(path):
    compose = load(path)
    engines = services_running(compose, "EV_CP_E")
    monitors = services_running(compose, "EV_CP_M")
    assert monitors
    for name, argv in monitors.items():
        engine = flag(argv, "--engine_ip")
        assert engine in engines, f"{name}: --engine_ip {engine} is not an Engine service"
        assert flag(engines[engine], "--port") == flag(argv, "--engine_port"), name
        assert depends(compose["services"][name]).get(engine) == "service_healthy", name
    cp_ids = [flag(argv, "--cp_id") for argv in monitors.values()]
    assert len(set(cp_ids)) == len(cp_ids), cp_ids


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=file_id)
def test_interactive_driver_is_in_a_profile_with_a_terminal(path):
    compose = load(path)
    drivers = services_running(compose, "EV_Driver")
    interactive = [name for name, argv in drivers.items() if "--file" not in argv and "--cp" not in argv]
    for name in interactive:
        service = compose["services"][name]
        assert service.get("profiles") == ["interactive"], name
        assert service.get("stdin_open") is True and service.get("tty") is True, name
    for name in set(drivers) - set(interactive):
        assert not compose["services"][name].get("profiles"), f"{name} would not start with `up`"
    if path in (BASE, PC1):
        assert interactive == ["driver-interactive"]


@pytest.mark.parametrize("path", [BASE, PC1], ids=file_id)
def test_driver_services_files_have_ten_known_cps(path):
    cp_ids = {flag(argv, "--cp_id") for argv in services_running(load(BASE), "EV_CP_M").values()}
    compose = load(path)
    file_drivers = {name: argv for name, argv in services_running(compose, "EV_Driver").items() if "--file" in argv}
    assert len(file_drivers) >= 2, file_drivers
    from ev_driver.services_file import read_services_file

    for name, argv in file_drivers.items():
        inside = flag(argv, "--file")
        mounts = {}
        for volume in compose["services"][name].get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = source
        assert inside in mounts, f"{name}: {inside} is not mounted"
        host = (path.parent / mounts[inside]).resolve()
        assert host.is_file(), f"{name}: {host} is missing"
        assert host.is_relative_to(ROOT / "deploy"), host
        entries = read_services_file(host)
        assert len(entries) >= MIN_SERVICES, f"{host}: {len(entries)} entries"
        assert set(entries) <= cp_ids, f"{host}: unknown CPs {set(entries) - cp_ids}"


# --- the one-machine file ---------------------------------------------------------------

def test_one_machine_start_order():
    compose = load(BASE)
    services = compose["services"]
    central = next(iter(services_running(compose, "EV_Central")))
    assert central == "central"
    assert depends(services["central"]) == {"kafka": "service_healthy", "mysql": "service_healthy",
                                            "register-drivers": "service_completed_successfully",
                                            "make-secrets": "service_completed_successfully"}
    assert depends(services["registry"]) == {"mysql": "service_healthy",
                                             "make-secrets": "service_completed_successfully"}
    assert depends(services["register-drivers"]) == {"mysql": "service_healthy"}
    for name in services_running(compose, "EV_CP_E"):
        assert depends(services[name]) == {"kafka": "service_healthy"}, name
    for name, argv in services_running(compose, "EV_CP_M").items():
        assert flag(argv, "--central_ip") == "central"
        assert depends(services[name]) == {"central": "service_healthy", "registry": "service_healthy",
                                           flag(argv, "--engine_ip"): "service_healthy"}, name
    monitors = set(services_running(compose, "EV_CP_M"))
    for name in services_running(compose, "EV_Driver"):
        deps = depends(services[name])
        assert deps["central"] == "service_healthy", name
        assert deps["register-drivers"] == "service_completed_successfully", name
        if not services[name].get("profiles"):
            assert {m: deps.get(m) for m in monitors} == dict.fromkeys(monitors, "service_healthy"), name


def test_one_machine_has_four_cps_one_with_a_tag_and_two_unattended_drivers():
    compose = load(BASE)
    monitors = services_running(compose, "EV_CP_M")
    assert sorted(flag(argv, "--cp_id") for argv in monitors.values()) == ["CP001", "CP002", "CP003", "CP004"]
    assert len({flag(argv, "--price") for argv in monitors.values()}) == 4
    assert len({flag(argv, "--location") for argv in monitors.values()}) == 4
    file_drivers = [argv for argv in services_running(compose, "EV_Driver").values() if "--file" in argv]
    assert sorted(flag(argv, "--driver_id") for argv in file_drivers) == ["D001", "D002"]


def test_one_machine_rfid_station_uses_centrals_mcsp_port_and_a_registered_tag():
    compose = load(BASE)
    central = services_running(compose, "EV_Central")["central"]
    mcsp_port = flag(central, "--mcsp-port")
    assert mcsp_port and any(p.endswith(f":{mcsp_port}") for p in compose["services"]["central"]["ports"])
    [(name, station)] = [(n, a) for n, a in services_running(compose, "EV_CP_E").items() if "--rfid-tag" in a]
    assert flag(station, "--mcsp") == f"central:{mcsp_port}" and "--auto" in station, name
    script = " ".join(as_list(compose["services"]["register-drivers"]["command"]))
    tag = flag(station, "--rfid-tag")
    account = re.search(rf"EV_Central tags add {tag} --account (\w+)", script)
    assert account and f"EV_Central accounts add {account.group(1)} " in script, script


def test_one_machine_programs_use_the_kafka_and_central_services():
    compose = load(BASE)
    services = compose["services"]
    advertised = environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert advertised == "PLAINTEXT://kafka:9092"
    for program in ("EV_Central", "EV_CP_E", "EV_Driver"):
        for name, argv in services_running(compose, program).items():
            assert flag(argv, "--kafka") == "kafka:9092", name
    central_port = flag(services_running(compose, "EV_Central")["central"], "--port")
    for name, argv in services_running(compose, "EV_CP_M").items():
        assert flag(argv, "--central_port") == central_port, name
    assert flag(services_running(compose, "EV_Central")["central"], "--ui") == "log"


@pytest.mark.parametrize("path", [BASE, PC2], ids=file_id)
def test_central_uses_the_mysql_database_the_mysql_service_creates(path):
    from ev_central.store import parse_db_url

    compose = load(path)
    services = compose["services"]
    mysql = environment(services["mysql"])
    assert services["mysql"]["image"].startswith("mysql:8")
    assert "mysqladmin" in " ".join(as_list(services["mysql"]["healthcheck"]["test"]))
    urls = [flag(argv, "--db") for argv in services_running(compose, "EV_Central").values()]
    urls += [flag(argv, "--db") for argv in runs(services["register-drivers"], "EV_Central")]
    urls.append(environment(services["central"])["EV_DB"])
    assert len(set(urls)) == 1, urls
    url = parse_db_url(urls[0])
    assert (url.scheme, url.host, url.port) == ("mysql", "mysql", 3306)
    assert (url.user, url.password, url.database) == (mysql["MYSQL_USER"], mysql["MYSQL_PASSWORD"],
                                                       mysql["MYSQL_DATABASE"])


@pytest.mark.parametrize("path", [BASE, PC2], ids=file_id)
def test_register_drivers_registers_every_driver_id_used(path):
    compose = load(path)
    registered = []
    for argv in runs(compose["services"]["register-drivers"], "EV_Central"):
        assert argv[1] in ADMIN_COMMANDS and argv[2] == "add", argv
        if argv[1] == "drivers":
            registered.append(argv[3])
    used = {flag(argv, "--driver_id") for argv in services_running(load(BASE), "EV_Driver").values()}
    used |= {flag(argv, "--driver_id") for argv in services_running(load(PC1), "EV_Driver").values()}
    assert used == {"D001", "D002", "D003"}
    assert used <= set(registered), registered


# --- the machine files -------------------------------------------------------------------

def test_machine_files_split_the_system():
    pc1, pc2, pc3 = (load(path) for path in MACHINE_FILES)
    assert set(pc1["services"]) == {"kafka", "wait-central", "driver1", "driver2", "driver-interactive"}
    assert set(pc2["services"]) == {"mysql", "register-drivers", "central"}
    assert set(pc3["services"]) == {"cp-engine", "cp-monitor"}
    assert not services_running(pc1, "EV_Central") and not services_running(pc1, "EV_CP_E")
    assert not services_running(pc2, "EV_Driver") and not services_running(pc2, "EV_CP_M")
    assert not services_running(pc3, "EV_Central") and not services_running(pc3, "EV_Driver")


def test_machine_files_take_the_addresses_from_the_variables():
    env = read_env_file(ENV_EXAMPLE)
    kafka = f"{env['KAFKA_HOST']}:9092"
    pc1, pc2, pc3 = (load(path) for path in MACHINE_FILES)
    kafka_env = environment(pc1["services"]["kafka"])
    assert kafka_env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{kafka}"
    assert "9092:9092" in pc1["services"]["kafka"]["ports"]
    assert as_list(pc1["services"]["wait-central"]["command"])[:4] == [
        "ev-port", "wait", env["CENTRAL_HOST"], env["CENTRAL_PORT"]]
    central = pc2["services"]["central"]
    assert flag(services_running(pc2, "EV_Central")["central"], "--kafka") == kafka
    assert f"{env['CENTRAL_PORT']}:5000" in central["ports"]
    engine = services_running(pc3, "EV_CP_E")["cp-engine"]
    monitor = services_running(pc3, "EV_CP_M")["cp-monitor"]
    assert flag(engine, "--kafka") == kafka
    assert "ports" not in pc3["services"]["cp-engine"], "the Engine's port stays inside its machine"
    assert (flag(monitor, "--central_ip"), flag(monitor, "--central_port")) == (env["CENTRAL_HOST"],
                                                                                  env["CENTRAL_PORT"])
    assert (flag(monitor, "--cp_id"), flag(monitor, "--location"), Decimal(flag(monitor, "--price"))) == (
        env["CP_ID"], env["CP_LOCATION"], Decimal(env["CP_PRICE"]))
    assert flag(engine, "--port") == flag(monitor, "--engine_port") == env["ENGINE_PORT"]


def test_machine_files_start_order():
    pc1, pc2, pc3 = (load(path) for path in MACHINE_FILES)
    for name in services_running(pc1, "EV_Driver"):
        assert depends(pc1["services"][name]) == {"kafka": "service_healthy",
                                                  "wait-central": "service_completed_successfully"}, name
    assert depends(pc2["services"]["register-drivers"]) == {"mysql": "service_healthy"}
    assert depends(pc2["services"]["central"]) == {"mysql": "service_healthy",
                                                   "register-drivers": "service_completed_successfully"}
    assert depends(pc3["services"]["cp-monitor"]) == {"cp-engine": "service_healthy"}


def test_machine_files_need_their_addresses():
    """An address left unset stops compose with a message, rather than pointing somewhere else."""
    yaml = yaml_module()
    for path, names in ((PC1, ["KAFKA_HOST", "CENTRAL_HOST"]), (PC2, ["KAFKA_HOST"]),
                        (PC3, ["KAFKA_HOST", "CENTRAL_HOST", "CP_ID"])):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        env = read_env_file(ENV_EXAMPLE)
        for name in names:
            with pytest.raises(AssertionError, match=f"{name}.*required"):
                substitute(raw, {k: v for k, v in env.items() if k != name})


def test_env_example_lists_only_variables_the_files_use():
    used = set()
    for path in COMPOSE_FILES:
        for match in _VARIABLE.finditer(path.read_text(encoding="utf-8")):
            if match["braced"]:
                used.add(_BRACED.fullmatch(match["braced"])["name"])
            elif match["named"]:
                used.add(match["named"])
    unused = set(read_env_file(ENV_EXAMPLE)) - used
    assert not unused, f"deploy/.env.example sets variables no file uses: {sorted(unused)}"


# --- docker compose config -q --------------------------------------------------------------

def compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], check=False, capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=file_id)
def test_docker_compose_config_accepts_the_file(path):
    tool = compose_command()
    if tool is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env = {key: value for key, value in os.environ.items() if key not in read_env_file(ENV_EXAMPLE)}
    args = [*tool, "--profile", "interactive"]
    if path in MACHINE_FILES:
        args += ["--env-file", str(ENV_EXAMPLE)]
    result = subprocess.run([*args, "-f", str(path), "config", "-q"], check=False, cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- the image ---------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_installs_the_requirements_then_the_project_and_nothing_for_development():
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs_ = [args for op, args in steps if op == "RUN"]
    requirements = [i for i, args in enumerate(runs_) if re.search(r"pip install\b.*-r \S*requirements\.txt\b", args)]
    project = [i for i, args in enumerate(runs_) if re.search(r"pip install --no-deps \S+", args)]
    assert requirements and project and requirements[0] < project[0], runs_
    text = " ".join(args for _, args in steps)  # comments aside
    for dev in ("requirements-dev", "pytest", "hypothesis", "calfkit", "[dev]", "pip install -e", "--editable"):
        assert dev not in text, dev


def test_dockerfile_copies_what_the_project_build_needs():
    project = pyproject()
    copied = " ".join(args for op, args in dockerfile_instructions() if op == "COPY")
    needed = [project["project"]["readme"], "pyproject.toml", "requirements.txt"]
    needed += [pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for item in needed:
        assert re.search(rf"(^|\s){re.escape(item)}(\s|$)", copied), f"{item} is not copied"


def test_dockerfile_runs_as_a_user_unbuffered_with_a_data_directory():
    steps = dockerfile_instructions()
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "EV_DATA_DIR=/data" in env
    assert ("WORKDIR", "/data") in steps
    assert any(op == "COPY" and "deploy/ev_port.py /usr/local/bin/ev-port" in args for op, args in steps)


def test_dockerfile_console_scripts_are_the_programs():
    assert set(pyproject()["project"]["scripts"]) == set(PROGRAMS)


def test_dockerignore_keeps_out_local_state_and_lets_the_build_inputs_in():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    for excluded in (".venv", ".git", "**/__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info", "tests"):
        assert excluded in patterns, excluded
    assert not any(pattern.startswith("!") for pattern in patterns)

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
                   for pattern in patterns for prefix in prefixes)

    copied = [args.split()[:-1] for op, args in dockerfile_instructions() if op == "COPY"]
    for sources in copied:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not ignored(source), f"{source} is copied but .dockerignore leaves it out"
    for package in ("ev_common", "ev_central", "ev_cp_engine", "ev_cp_monitor", "ev_driver"):
        for module in (ROOT / package).rglob("*.py"):
            assert not ignored(str(module.relative_to(ROOT))), module


# --- deploy/ev_port.py --------------------------------------------------------------------------

def ev_port_module():
    spec = spec_from_file_location("ev_port", EV_PORT)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ev_port_reads_listening_and_connected_sockets_from_a_socket_table(tmp_path):
    ev_port = ev_port_module()
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 00000000:1388 00000000:0000 0A 00000000:00000000\n"  # listening on 5000
        "   1: 0100007F:9C40 0200000A:1389 01 00000000:00000000\n"  # connected to port 5001
        "   2: 0100007F:9C41 0200000A:138A 06 00000000:00000000\n")  # TIME_WAIT to port 5002
    tables = [table, tmp_path / "missing"]
    assert ev_port.listening(5000, tables) and not ev_port.listening(5001, tables)
    assert ev_port.connected(5001, tables) and not ev_port.connected(5000, tables)
    assert not ev_port.connected(5002, tables)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_ev_port_command_on_real_sockets():
    def ev_port(*args: str) -> int:
        result = subprocess.run([sys.executable, str(EV_PORT), *args], check=False, capture_output=True, timeout=30)
        return result.returncode

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert ev_port("listening", str(port)) == 0
        assert ev_port("connected", str(port)) == 1
        assert ev_port("wait", "127.0.0.1", str(port), "--timeout", "5") == 0
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                assert ev_port("connected", str(port)) == 0
    assert ev_port("listening", str(port)) == 1
    assert ev_port("wait", "127.0.0.1", str(port), "--timeout", "0") == 1


def test_one_machine_runs_in_secure_mode_with_the_secrets_made_on_first_start():
    """Central --secure with a certificate make-secrets made; every Monitor a credential file in its
    own volume, registered at EV_Registry with the operator token, verifying Central's and the
    Registry's certificates; no volume with a private key or the master key reaches a CP."""
    compose = load(BASE)
    services = compose["services"]
    central = services_running(compose, "EV_Central")["central"]
    assert "--secure" in central
    script = as_list(services["make-secrets"]["command"])[0]
    mounts = {name: {v.split(":")[1]: v.split(":")[0] for v in services[name].get("volumes", [])} for name in services}
    for made in (flag(central, "--tls-cert"), flag(central, "--tls-key")):
        folder = made.rsplit("/", 1)[0]
        assert folder in script and mounts["central"][folder] == mounts["make-secrets"][folder], made
    registry = next(iter(services_running(compose, "EV_Registry").values()))
    token = flag(registry, "--admin-token-file")
    assert token in script and "umask 077" in script
    for name, argv in services_running(compose, "EV_CP_M").items():
        env = environment(services[name])
        assert flag(argv, "--credentials").startswith("/data/") and mounts[name]["/data"].endswith("-monitor-data")
        assert env["EV_REGISTRY_URL"] == "https://registry:8443" and env["EV_REGISTRY_TOKEN_FILE"] == token
        for trusted in (env["EV_CENTRAL_CA"], env["EV_REGISTRY_CA"]):
            assert trusted.startswith("/secrets/public/") and trusted.rsplit("/", 1)[1] in script, trusted
        private = {mounts["make-secrets"]["/secrets/central"], mounts["make-secrets"]["/secrets/registry"],
                   mounts["central"]["/data"]}
        assert not private & set(mounts[name].values()), f"{name} mounts a private key or the master key"
        check_program_argv(argv, env)  # --credentials with EV_CENTRAL_CA: accepted by the Monitor's parser


def test_one_machine_weather_office_reports_to_centrals_api_with_its_token():
    compose = load(BASE)
    services = compose["services"]
    central = services_running(compose, "EV_Central")["central"]
    offices = services_running(compose, "EV_W")
    assert set(offices) == {"weather", "weather-openweather"}
    for name, argv in offices.items():
        assert flag(argv, "--central-api") == f"https://central:{flag(central, '--api-port')}", name
        assert flag(argv, "--token-file") == flag(central, "--weather-token-file"), name
        assert flag(argv, "--central-ca").rsplit("/", 1)[1] == flag(central, "--api-cert").rsplit("/", 1)[1], name
        check_program_argv(argv, environment(services[name]))
    assert "--simulate" in offices["weather"] and not services["weather"].get("profiles")
    assert services["weather-openweather"]["profiles"] == ["openweather"]
    assert environment(services["weather-openweather"])["OPENWEATHER_API_KEY"] == ""  # from an env file, never here
    located = {line.split()[0] for line in (ROOT / "deploy/weather/locations.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert located == {flag(argv, "--cp_id") for argv in services_running(compose, "EV_CP_M").values()}


def test_one_machine_gateways_profile_serves_monitors_through_haproxy():
    """Profile `gateways`: Central serves gateways; each gateway runs `EV_Central gateway` in secure
    mode with Central's certificate, master key and database, a distinct id, the same Kafka and
    topic prefix; HAProxy (TCP) lists exactly those gateways on their port."""
    compose = load(BASE)
    services = compose["services"]
    central = services_running(compose, "EV_Central")["central"]
    assert "--gateways" in central
    gateways = {name: argv for name, argv in services_running(compose, "EV_Central").items() if argv[1:2] == ["gateway"]}
    assert len(gateways) >= 2, gateways
    ids = {flag(argv, "--id") for argv in gateways.values()}
    assert len(ids) == len(gateways), ids
    for name, argv in gateways.items():
        assert services[name]["profiles"] == ["gateways"], name
        assert flag(argv, "--kafka") == flag(central, "--kafka") and flag(argv, "--topic-prefix") == flag(
            central, "--topic-prefix"), name
        assert "--secure" in argv and flag(argv, "--db") == flag(central, "--db"), name
        assert flag(argv, "--tls-cert") == flag(central, "--tls-cert"), name
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts[flag(argv, "--master-key").rsplit("/", 1)[0]] == "central-data", name
        assert depends(services[name]) == {"central": "service_healthy"}, name
    haproxy = services["haproxy"]
    assert haproxy["profiles"] == ["gateways"] and haproxy["image"].startswith("haproxy:")
    config = (ROOT / "deploy" / "haproxy.cfg").read_text(encoding="utf-8")
    assert re.search(r"^\s*mode tcp", config, re.M)
    servers = re.findall(r"^\s*server \S+ (\S+):(\d+)", config, re.M)
    assert sorted(servers) == sorted((name, flag(argv, "--port")) for name, argv in gateways.items())
    assert haproxy["ports"] == ["5500:5000"] and re.search(r"^\s*bind :5000", config, re.M)
