"""The trainer at the other end of ``train.py | trainguard monitor -``: found through /proc
(real pipes, real processes), and its command line's config judged as ``trainguard run``
judges its command's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from trainguard.monitor.ingest.pipe_writer import pipe_inode, stdin_writer

pytestmark = pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(),
                                reason="finding a pipe's writer needs Linux /proc")

#: Prints TRL log dicts of a warmup climbing 1e-8 a step, then lingers as a trainer would.
FAKE_TRAINER = textwrap.dedent("""
    import sys, time
    for step in range(1, 8):
        print({'loss': '3.6', 'grad_norm': '1.5', 'learning_rate': f'{(step - 1) * 1e-8:.3g}',
               'epoch': f'{step / 16:.4g}'}, flush=True)
    time.sleep(1.5)
""")


def _sleeper(stdout: int, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
    code = "import time; time.sleep(30)"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=stdout,
                            **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass


def test_the_process_writing_into_a_pipe_is_found_with_its_command_line(pipe, tmp_path):
    read_end, write_end = pipe
    writer = _sleeper(write_end, "--warmup_steps", "7", cwd=tmp_path)
    os.close(write_end)
    try:
        found = stdin_writer(read_end)
        assert found is not None
        assert (writer.pid, ("--warmup_steps", "7"), str(tmp_path)) == (
            found.pid, found.argv[-2:], found.cwd)
    finally:
        writer.kill()
        writer.wait()


def test_of_a_writer_and_the_workers_it_started_the_parent_is_the_command(pipe):
    """accelerate launch and its workers share the pipe: the user typed the launcher."""
    read_end, write_end = pipe
    launcher = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                "'import time; time.sleep(30)']); time.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", launcher, "--max_steps", "20"],
                              stdout=write_end)
    os.close(write_end)
    try:
        for _ in range(200):  # until the worker has started
            if psutil.Process(parent.pid).children():
                break
            time.sleep(0.05)
        assert psutil.Process(parent.pid).children()
        found = stdin_writer(read_end)
        assert found is not None and (parent.pid, "20") == (found.pid, found.argv[-1])
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait()


def test_a_writer_of_another_process_group_is_not_looked_at(pipe):
    """Only the monitor's own pipeline: a pipe from elsewhere finds nothing, not a stranger."""
    read_end, write_end = pipe
    writer = _sleeper(write_end, "--warmup_steps", "7", start_new_session=True)
    os.close(write_end)
    try:
        assert stdin_writer(read_end) is None
    finally:
        writer.kill()
        writer.wait()


def test_a_file_or_a_closed_descriptor_is_not_a_pipe(tmp_path):
    path = tmp_path / "events.txt"
    path.write_text("x\n")
    with open(path, "rb") as handle:
        assert pipe_inode(handle.fileno()) is None and stdin_writer(handle.fileno()) is None
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    assert pipe_inode(read_end) is None


def _pipeline(trainer_args: str, tmp_path: Path, trainer_cwd: Path | None = None,
              redirect: str = "") -> str:
    """``(cd TRAINER_CWD; python fake.py ARGS REDIRECT) | trainguard monitor - --once``
    through a real shell whose own directory is ``tmp_path``."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", PYTHONPATH=str(ROOT))
    trainer = f"exec {sys.executable} {script} {trainer_args} {redirect}"
    if trainer_cwd is not None:
        trainer = f"cd {trainer_cwd} && {trainer}"
    command = f"({trainer}) | {sys.executable} -m trainguard monitor - --once"
    done = subprocess.run(["sh", "-c", command], capture_output=True, env=env, timeout=60,
                          cwd=tmp_path, check=False)
    return (done.stdout + done.stderr).decode()


def test_a_piped_trainers_warmup_flag_is_called_at_step_1(tmp_path):
    out = _pipeline("--warmup_steps 100000 --max_steps 20", tmp_path)
    assert "config from the command line of pid" in out and "warmup_steps=100000" in out, out
    assert "HIGH  common.warmup_longer_than_run step 1" in out, out


def test_a_piped_trainers_relative_config_file_is_read_from_its_directory(tmp_path):
    """A TRL ``--config recipe.yaml`` names a file in the trainer's directory, not the
    monitor's."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "recipe.yaml").write_text("warmup_steps: 100000\nmax_steps: 20\n")
    out = _pipeline("--config recipe.yaml", tmp_path, trainer_cwd=recipes)
    assert "HIGH  common.warmup_longer_than_run step 1" in out, out


def test_a_piped_trainer_without_warmup_flags_gets_no_config_alert(tmp_path):
    """What the command line does not name stays unknown: no guessed default warms up."""
    out = _pipeline("--learning_rate 1e-3 --seed 3", tmp_path)
    assert "which writes to stdin: learning_rate=0.001\n" in out, out
    assert "HIGH  common.warmup_longer_than_run" not in out, out
    assert "had no max_steps, warmup_ratio, warmup_steps to judge (looked in: the command " \
           "line of pid" in out, out
    assert "MEDIUM  common.learning_rate_tiny_in_warmup step 5" in out, out


def test_through_tee_the_trainer_upstream_is_found(tmp_path):
    """``python fake.py --warmup_steps ... | tee log | trainguard monitor -``: tee only passes
    the pipe on; the trainer writing tee's stdin is the command."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", PYTHONPATH=str(ROOT))
    command = (f"{sys.executable} {script} --warmup_steps 100000 --max_steps 20 | "
               f"tee {tmp_path / 'train.log'} | {sys.executable} -m trainguard monitor - --once")
    done = subprocess.run(["sh", "-c", command], capture_output=True, env=env, timeout=60,
                          cwd=tmp_path, check=False)
    out = (done.stdout + done.stderr).decode()
    assert "HIGH  common.warmup_longer_than_run step 1" in out, out
    assert (tmp_path / "train.log").read_text().count("learning_rate") == 7


def test_a_piped_trainer_whose_stderr_goes_elsewhere_is_told_to_pipe_both(tmp_path):
    """Its step bar, warnings and tracebacks would go unseen: the monitor says so, and how."""
    log = tmp_path / "err.log"
    out = _pipeline("--max_steps 20", tmp_path, redirect=f"2> {log}")
    assert f"stderr goes to {log}, not into this pipe" in out, out
    assert "2>&1 | trainguard monitor -" in out, out


def test_a_piped_trainer_with_stderr_merged_gets_no_such_note(tmp_path):
    out = _pipeline("--max_steps 20", tmp_path, redirect="2>&1")
    assert "config from the command line of pid" in out, out  # the writer was found
    assert "not into this pipe" not in out, out
