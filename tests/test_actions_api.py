"""The public names of the stopping modules are pinned."""

from __future__ import annotations

from trainguard.monitor.act import actions, postmortem, process, runner


def test_public_api_of_the_stopping_modules_is_pinned():
    """Every name in __all__ exists, and the lists are what the README documents."""
    expected = {
        actions: ["ControlFileStopper", "SENT_LOG_FILENAME", "SentLog", "StopPlan", "Stopper",
                  "read_run_id", "stale_control_file"],
        process: ["ProcessTarget", "SignalOutcome", "parse_signal"],
        runner: ["EXIT_STOPPED", "OUTPUT_STREAM", "RunOptions", "RunResult",
                 "choose_output_parser", "run_command"],
        postmortem: ["POSTMORTEM_FILENAME", "describe_exit", "find_resume_checkpoint",
                     "write_postmortem"],
    }
    for module, names in expected.items():
        assert sorted(module.__all__) == sorted(names)
        assert all(hasattr(module, name) for name in names)
    assert runner.EXIT_STOPPED == 3
