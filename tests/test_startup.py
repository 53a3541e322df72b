"""Start-up: the built-in pack cache (builtin_cache.py) and what a start imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import trainguard
import trainguard.rules
from trainguard import builtin_cache
from trainguard.monitor.ingest.normalize import builtin_field_maps, load_field_map, parse_field_map
from trainguard.rules import loader
from trainguard.rules.loader import builtin_pack_names, load_pack, parse_pack

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty pack cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv(builtin_cache.CACHE_ENV, str(path))
    return path


def _text(name: str) -> str:
    return (resources.files("trainguard.rules") / "packs" / f"{name}.yaml").read_text("utf-8")


def _cached(name: str, text: str | None = None) -> object:
    """The located rules the cache holds for pack ``name`` (None: a miss)."""
    entry = builtin_cache.load("packs", name, _text(name) if text is None else text,
                               loader._CACHE_CODE)
    return loader._from_cache(entry)


def _snapshot(compiled: list) -> list:  # type: ignore[type-arg]
    """Everything a loaded rule carries, types included (an enum is not its string)."""
    return [(c.rule, sorted(c.rule.model_fields_set),
             {k: type(v) for k, v in vars(c.rule).items()}, c.source,
             sorted(c.condition.metrics)) for c in compiled]


@pytest.mark.parametrize("name", builtin_pack_names())
def test_a_builtin_pack_from_the_cache_equals_the_pack_parsed_from_yaml(cache: Path, name: str):
    """Cached rules are the parsed ones: fields, fields set, types, lines and sources."""
    parsed = parse_pack(_text(name), f"<pack {name}>")
    load_pack(name)  # a miss: parses, then stores
    assert _cached(name) is not None
    assert _snapshot(parsed) == _snapshot(load_pack(name))


def test_an_edited_pack_is_a_miss_never_stale_data(cache: Path):
    """Other YAML text has another key: the entry of the old text is not served for it."""
    load_pack("common")
    edited = _text("common").replace("severity: critical", "severity: low", 1)
    assert (True, None) == (_cached("common") is not None,
                            _cached("common", edited))


def test_entries_of_other_code_are_a_miss(cache: Path):
    """The key covers the code that made the entry: other modules' sources, another key."""
    load_pack("common")
    other = builtin_cache.load("packs", "common", _text("common"), ("trainguard.rules.dsl",))
    assert (True, None) == (_cached("common") is not None, other)


def test_a_corrupt_entry_is_a_miss_and_is_rewritten(cache: Path):
    """A truncated file is ignored; the next load parses the YAML and writes a good entry."""
    load_pack("common")
    (entry,) = (cache / "packs").iterdir()
    entry.write_bytes(entry.read_bytes()[:100])
    miss = _cached("common")
    reloaded = load_pack("common")
    assert (None, True) == (miss, _cached("common") is not None)
    assert _snapshot(parse_pack(_text("common"), "<pack common>")) == _snapshot(reloaded)


@pytest.mark.parametrize(("index", "change"), [
    (0, {"severity": "catastrophic"}), (0, {"exec": "x"}), (1, "seven"), (0, "not-a-map")],
    ids=["bad-enum", "unknown-field", "line-not-an-int", "fields-not-a-map"])
def test_an_entry_of_another_shape_is_a_miss(cache: Path, index: int, change: object):
    """Entries that are not what this code writes (a bad enum, an unknown field) are a miss."""
    load_pack("common")
    (entry,) = (cache / "packs").iterdir()
    payload = json.loads(entry.read_text())
    first = payload["data"][0]
    if isinstance(change, dict):
        first[index].update(change)
    else:
        first[index] = change
    entry.write_text(json.dumps(payload))
    assert _cached("common") is None


@pytest.mark.parametrize("tamper", ["group-writable", "another-owner"])
def test_an_entry_someone_else_could_have_written_is_a_miss(cache: Path, tamper: str):
    """Cached rules are trusted, so an entry not owned by us alone is never used."""
    load_pack("common")
    (entry,) = (cache / "packs").iterdir()
    if tamper == "group-writable":
        entry.chmod(0o664)
    elif os.geteuid() == 0:
        os.chown(entry, 65534, 65534)
    else:
        pytest.skip("only root can give a file to another owner")
    assert _cached("common") is None


def test_entries_are_written_for_us_alone_whatever_the_umask(cache: Path):
    """A umask of 002 does not make entries group-writable (which would make them all miss)."""
    old = os.umask(0o002)
    try:
        load_pack("common")
    finally:
        os.umask(old)
    (entry,) = (cache / "packs").iterdir()
    assert (0o600, True) == (entry.stat().st_mode & 0o777, _cached("common") is not None)


def test_an_unwritable_cache_still_loads_the_pack(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    """A cache dir that cannot be made (its parent is a file) is skipped, leaving nothing."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(builtin_cache.CACHE_ENV, str(blocker / "cache"))
    rules = load_pack("common")
    assert (_snapshot(parse_pack(_text("common"), "<pack common>")), [blocker]) == (
        _snapshot(rules), list(tmp_path.iterdir()))


def test_cache_off_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """TRAINGUARD_CACHE_DIR=off: packs load from YAML and no file is written anywhere."""
    monkeypatch.setenv(builtin_cache.CACHE_ENV, "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_pack("common")
    assert (None, []) == (builtin_cache.cache_dir(), list(tmp_path.iterdir()))


def test_cache_dir_is_xdg_cache_home_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Without TRAINGUARD_CACHE_DIR: $XDG_CACHE_HOME/trainguard, else ~/.cache/trainguard."""
    monkeypatch.delenv(builtin_cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with_xdg = builtin_cache.cache_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert (tmp_path / "xdg" / "trainguard", tmp_path / ".cache" / "trainguard") == (
        with_xdg, builtin_cache.cache_dir())


@pytest.mark.parametrize("name", builtin_field_maps())
def test_a_field_map_preset_from_the_cache_equals_the_preset_parsed(cache: Path, name: str):
    """A cached field-map preset renames and aliases exactly as the parsed YAML does."""
    text = (resources.files("trainguard.presets") / "fields" / f"{name}.yaml").read_text("utf-8")
    parsed = parse_field_map(text, f"<preset {name}>")
    load_field_map([name])  # a miss: parses, then stores
    stored = builtin_cache.load("fields", name, text, ("trainguard.monitor.ingest.normalize",))
    cached = load_field_map([name])
    assert (True, parsed.mapping, parsed.aliases) == (
        stored is not None, cached.mapping, cached.aliases)


def test_a_users_rule_file_is_never_cached(cache: Path, tmp_path: Path):
    """Only built-in packs are cached: a user's file is parsed (and located) every time."""
    path = tmp_path / "mine.yaml"
    path.write_text("rules:\n  - id: t.a\n    metric: loss\n    condition: loss > 1\n")
    load_pack(str(path))
    assert not cache.exists()


def _modules_after(tmp_path: Path, argv: list[str], runs: int = 2) -> set[str]:
    """The modules imported by an in-process ``trainguard ARGV`` (the last of ``runs`` runs)."""
    script = ("import json, runpy, sys\n"
              f"sys.argv = ['trainguard', *{argv!r}]\n"
              "try:\n    runpy.run_module('trainguard', run_name='__main__')\n"
              "except SystemExit:\n    pass\n"
              "print(json.dumps(sorted(sys.modules)))\n")
    env = dict(os.environ, TRAINGUARD_CACHE_DIR=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    for _ in range(runs):  # the first run fills the pack cache
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env,
                             check=True, timeout=60).stdout
    return set(json.loads(out.decode().splitlines()[-1]))


#: Imports a `monitor FILE --once --quiet` start does not need (and once paid for).
NOT_FOR_A_QUIET_FILE_RUN = ("ruamel.yaml", "rich", "re2", "trainguard.emitters.writer",
                            "trainguard.monitor.ingest.stdout", "trainguard.monitor.act.postmortem",
                            "watchdog", "pynvml", "polars")


def _quiet_once_run_modules(tmp_path: Path) -> set[str]:
    """The modules of `monitor F --once --quiet` on 10 SFT records (packs already cached)."""
    events = tmp_path / "e.jsonl"
    events.write_text("".join(json.dumps({"step": i, "metrics": {"loss": 1.0, "grad_norm": 1.0,
                                                                  "mean_token_accuracy": 0.5}})
                              + "\n" for i in range(1, 11)))
    return _modules_after(tmp_path, ["monitor", str(events), "--once", "--quiet"])


def test_monitor_once_quiet_on_a_file_imports_no_yaml_parser_rich_or_re2(tmp_path: Path):
    """With the packs cached, a quiet --once run on JSONL imports none of what it never uses."""
    modules = _quiet_once_run_modules(tmp_path)
    assert "trainguard.monitor.daemon" in modules  # it did run the monitor
    assert [] == [m for m in NOT_FOR_A_QUIET_FILE_RUN if m in modules]


def test_monitor_once_quiet_on_a_short_file_does_not_import_numpy(tmp_path: Path):
    """10 records never make a batch (BATCH_MIN), so numpy is not worth its import."""
    assert "numpy" not in _quiet_once_run_modules(tmp_path)


def test_the_rules_start_numpy_with_one_blas_thread_and_leave_the_environment_alone():
    """numpy, first imported by the batch kernels, runs no BLAS thread besides the main one
    (OpenBLAS would start one per core, and spin), and the variable that does it is gone from
    the environment afterwards, so a trainer started later gets its own default. A thread
    count the user chose is theirs. (Threads counted in /proc: one task is the main thread.)"""
    code = ("import os\n"
            "from trainguard.rules import vector\n"
            "print(len(os.listdir('/proc/self/task')), os.environ.get('OPENBLAS_NUM_THREADS'))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OPENBLAS_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                         env=env, timeout=60).stdout
    assert "1 None" == out.decode().strip()
    chosen = dict(env, OPENBLAS_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                         env=chosen, timeout=60).stdout
    assert out.decode().split()[1] == "2"


def test_help_imports_neither_the_monitor_nor_the_rules(tmp_path: Path):
    """`trainguard --help` builds the help from the CLI module alone."""
    modules = _modules_after(tmp_path, ["--help"], runs=1)
    assert [] == sorted(m for m in modules
                        if m.startswith(("trainguard.monitor", "trainguard.rules")))


def test_import_trainguard_imports_the_writer_only_when_asked():
    """`import trainguard` is cheap; `from trainguard import EventWriter` still works."""
    code = ("import sys, trainguard\n"
            "before = 'trainguard.emitters.writer' in sys.modules\n"
            "from trainguard import EventWriter\n"
            "print(before, EventWriter.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60).stdout
    assert "False trainguard.emitters.writer" == out.decode().strip()


@pytest.mark.parametrize("package", [trainguard, trainguard.rules], ids=lambda p: p.__name__)
def test_every_public_name_of_a_lazy_package_resolves(package: object):
    """Each name in __all__ of a package with a module __getattr__ is there; others are not."""
    names = [n for n in package.__all__ if getattr(package, n, None) is None]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        package.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    assert [] == names


def test_the_cli_exit_code_for_a_degraded_run_is_the_daemons():
    """cli.EXIT_DEGRADED (kept there so --help need not import the daemon) equals the daemon's."""
    from trainguard import cli
    from trainguard.monitor import daemon

    assert daemon.EXIT_DEGRADED == cli.EXIT_DEGRADED
