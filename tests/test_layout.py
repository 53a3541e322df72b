"""The package layout is the architecture: each room imports only what its docstring allows.

Every ``import`` in the package is read from its source (including imports inside functions and
under ``TYPE_CHECKING``, unless noted), so a new dependency between rooms fails here first.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trainguard"

#: The session, whichever module of it: what wires the rooms together, so no room imports it.
SESSION_MODULES = ("trainguard.monitor.session", "trainguard.monitor.session_options",
                   "trainguard.monitor.session_console", "trainguard.monitor.stop_watch")

# Standard-library and third-party modules whose only job is I/O, processes, threads or signals.
IO_MODULES = {"subprocess", "socket", "signal", "threading", "multiprocessing", "select",
              "selectors", "shutil", "fcntl", "psutil", "watchdog", "pynvml", "http", "urllib",
              "asyncio", "apprise", "prometheus_client", "ray"}


def _imports(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Modules a source file imports (``from x import y`` counts as ``x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                         "typing.TYPE_CHECKING"):
                skip |= {id(n) for n in ast.walk(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(room: str) -> dict[str, Path]:
    base = PACKAGE.joinpath(*room.split(".")[1:])
    files = [base.with_suffix(".py")] if base.with_suffix(".py").exists() else sorted(
        base.rglob("*.py"))
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in files}


def _offenders(room: str, forbidden: tuple[str, ...], *, runtime_only: bool = False,
               allow: tuple[str, ...] = ()) -> list[str]:
    out = []
    for module, path in _modules(room).items():
        for name in sorted(_imports(path, runtime_only=runtime_only)):
            hit = any(name == f or name.startswith(f + ".") for f in forbidden)
            allowed = any(name == a or name.startswith(a + ".") for a in allow)
            if hit and not allowed:
                out.append(f"{module} imports {name}")
    return out


def test_trainer_side_never_imports_the_monitor_or_the_rules():
    """``emitters`` runs inside the trainer: it may import only events, control and itself."""
    assert _offenders("trainguard.emitters", ("trainguard",),
                      allow=("trainguard.emitters", "trainguard.events", "trainguard.control")) == []


@pytest.mark.parametrize("module", ["trainguard.events", "trainguard.control"])
def test_protocol_modules_import_nothing_else_of_ours(module):
    """The event format and the control-file protocol stand alone, so any tool can vendor them."""
    assert _offenders(module, ("trainguard",)) == []


def test_rules_never_import_the_monitor():
    """The rules package is data and a language: it never reaches up into the monitor."""
    assert _offenders("trainguard.rules", ("trainguard.monitor", "trainguard.cli")) == []


def test_rules_and_engine_import_nothing_that_does_io():
    """Rules and the engine are pure: no processes, threads, signals, sockets or I/O rooms."""
    forbidden = tuple(IO_MODULES) + ("trainguard.monitor.ingest", "trainguard.monitor.act",
                                     "trainguard.monitor.sinks", "trainguard.monitor.daemon",
                                     *SESSION_MODULES, "trainguard.cli")
    assert _offenders("trainguard.rules", forbidden) == []
    assert _offenders("trainguard.monitor.engine", forbidden) == []


def test_engine_imports_only_rules_events_and_itself():
    """Inside the package, the engine depends on the rules, the event format and exceptions."""
    assert _offenders("trainguard.monitor.engine", ("trainguard",),
                      allow=("trainguard.monitor.engine", "trainguard.rules", "trainguard.events",
                             "trainguard.exceptions")) == []


def test_ingest_never_imports_act_sinks_or_the_loop():
    """Sources and parsing feed the loop; they never act or deliver."""
    assert _offenders("trainguard.monitor.ingest",
                      ("trainguard.monitor.act", "trainguard.monitor.sinks",
                       "trainguard.monitor.daemon", *SESSION_MODULES,
                       "trainguard.monitor.engine.engine", "trainguard.cli")) == []


def test_sinks_never_import_ingest_or_act_at_run_time():
    """Sinks receive alerts and summaries; the types they annotate with are not dependencies."""
    assert _offenders("trainguard.monitor.sinks",
                      ("trainguard.monitor.ingest", "trainguard.monitor.act",
                       "trainguard.monitor.daemon", "trainguard.cli"), runtime_only=True) == []


def test_act_outside_the_runner_never_imports_the_loop_or_sinks():
    """Only ``act.runner`` (``trainguard run``: a session of its own) wires the loop and sinks."""
    offenders = [o for o in _offenders("trainguard.monitor.act",
                                       ("trainguard.monitor.sinks", "trainguard.monitor.daemon",
                                        *SESSION_MODULES, "trainguard.cli"))
                 if not o.startswith("trainguard.monitor.act.runner ")]
    assert offenders == []


def test_only_the_ray_room_imports_ray():
    """The core never imports Ray (``trainguard[ray]`` is an extra); ``monitor.ray`` only in
    ``launch``, which a Ray session loads."""
    offenders = [o for o in _offenders("trainguard", ("ray",))
                 if not o.startswith("trainguard.monitor.ray.launch ")]
    assert offenders == []


def test_the_ray_room_never_imports_the_cli_or_sinks():
    """Agents and the monitor actor run the library's session; they never reach the CLI."""
    assert _offenders("trainguard.monitor.ray", ("trainguard.cli", "trainguard.monitor.sinks")) == []


#: The command line, whichever module of it (``cli.py`` and the ``cli_*.py`` command modules).
CLI_MODULES = tuple(sorted(f"trainguard.{p.stem}" for p in PACKAGE.glob("cli*.py")))


def test_nothing_imports_the_cli():
    """``cli`` and its command modules only parse arguments; the library never calls back
    into them (they import each other, and ``__main__`` runs them)."""
    offenders = [o for o in _offenders("trainguard", CLI_MODULES)
                 if not o.startswith(("trainguard.__main__ ", *(f"{m} " for m in CLI_MODULES)))]
    assert ("trainguard.cli_follow" in CLI_MODULES, offenders) == (True, [])


@pytest.mark.parametrize(("path", "name"), [
    ("trainguard", "EventWriter"),
    ("trainguard.emitters", "EventWriter"),
    ("trainguard.emitters.trl", "TrainGuardCallback"),
    ("trainguard.rules.testing", "run_rule_tests"),
    ("trainguard.rules.testing", "replay"),
    ("trainguard.monitor.engine.testing", "run_rule_tests"),
])
def test_documented_import_paths_keep_working(path, name):
    """The paths users type in their code resolve after the move."""
    assert callable(getattr(importlib.import_module(path), name))


def test_every_room_says_what_it_owns_and_may_import():
    """Each package's ``__init__`` docstring names what it may import."""
    for room in ("monitor", "monitor/ingest", "monitor/engine", "monitor/act", "monitor/sinks",
                 "monitor/ray"):
        doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text()))
        assert doc and ("import" in doc), room
