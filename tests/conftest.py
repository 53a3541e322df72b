"""Shared fixtures: paths, and a helper to run the real CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


#: Root reads any file; this prefix drops the capabilities that let it, so permission tests
#: mean the same as root and as a user.
DROP_ROOT_READ = (["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                   "--bounding-set=-dac_override,-dac_read_search"]
                  if os.geteuid() == 0 else [])


@pytest.fixture(autouse=True, scope="session")
def _private_pack_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The built-in pack cache of every process the tests start lives in a temporary folder:
    the suite leaves nothing in the user's ~/.cache (tests of the cache set their own)."""
    os.environ["TRAINGUARD_CACHE_DIR"] = str(tmp_path_factory.mktemp("trainguard-cache"))


def run_cli(*args: str, input: bytes | None = None, timeout: float = 60,
            prefix: list[str] | None = None,
            **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m trainguard ARGS`` as a real process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.run([*(prefix or []), sys.executable, "-m", "trainguard", *args], input=input,
                          capture_output=True, timeout=timeout, env=env, check=False,
                          **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """An empty run directory."""
    path = tmp_path / "run"
    path.mkdir()
    return path
