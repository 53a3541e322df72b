"""verl's and OpenRLHF's output, reproduced from their own source (neither installs here).

Each writer below copies the format string or call of the named file at the named commit; the
progress bars are drawn by the real tqdm, as both frameworks draw them. Mocked because the
frameworks themselves cannot be installed (they need GPUs, Ray, vLLM and DeepSpeed).
"""

from __future__ import annotations

import io
import logging
import math
import numbers
import pprint
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
from tqdm import tqdm

VERL_COMMIT = "b178a3cd56f58b2d502255daba591e92833930a7"
OPENRLHF_COMMIT = "3c3be6234e0cb353e76bb8019947db9dfe99fca7"
#: The last OpenRLHF commit with kto_trainer.py (removed by 6a981c8c).
OPENRLHF_KTO_COMMIT = "04898500df3501c9f3e70cf05afce54b553dc549"


# -- verl ------------------------------------------------------------------------------------------

def verl_concat_dict_to_str(dict: dict[str, Any], step: int) -> str:  # noqa: A002 - verl's name
    """verl/utils/logger/aggregate_logger.py ``concat_dict_to_str`` at VERL_COMMIT, verbatim."""
    output = [f"step:{step}"]
    for k, v in dict.items():
        if isinstance(v, numbers.Number):
            output.append(f"{k}:{pprint.pformat(v)}")
    output_str = " - ".join(output)
    return output_str


def verl_file_logger_line(data: dict[str, Any], step: int) -> bytes:
    """verl/utils/tracking.py ``FileLogger.log`` at VERL_COMMIT: what it writes for one step."""
    data = {"step": step, "data": data}
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def verl_step_metrics(step: int, *, critic: bool, pg_loss: float = -0.01,
                      reward_kl_penalty: float = 0.01) -> dict[str, Any]:
    """The keys one verl training step logs (verl/trainer/ppo/metric_utils.py
    compute_data_metrics, dp_actor.py update_policy, ray_trainer.py fit), numpy values as the
    trainer holds them. ``critic``: PPO with a value model (GAE) rather than GRPO."""
    metrics: dict[str, Any] = {
        "training/global_step": step,
        "training/epoch": 0,
        "actor/pg_loss": np.float64(pg_loss),
        "actor/pg_clipfrac": np.float64(0.01),
        "actor/ppo_kl": np.float64(0.001),
        "actor/entropy": np.float64(1.2),
        "actor/grad_norm": np.float64(0.8),
        "actor/lr": 1e-6,
        "actor/reward_kl_penalty": np.float64(reward_kl_penalty),
        "critic/score/mean": np.float64(0.4 + 0.01 * step),
        "critic/rewards/mean": np.float64(0.4 + 0.01 * step),
        "critic/advantages/mean": np.float64(0.0),
        "critic/returns/mean": np.float64(0.4),
        "response_length/mean": np.float64(120.0),
        "response_length/clip_ratio": np.float64(0.02),
        "perf/time_per_step": 3.2,
        "timing_s/gen": 1.5,
    }
    if critic:
        metrics.update({"critic/values/mean": np.float64(0.3), "critic/vf_loss": np.float64(0.05),
                        "critic/vf_explained_var": np.float64(0.2)})
    return metrics


def verl_console(steps: Iterable[dict[str, Any]], *, total: int) -> bytes:
    """verl's driver output with stdout and stderr in one stream: LocalLogger.log's print of
    each step, then ray_trainer.fit's ``progress_bar.update(1)`` (tqdm, desc "Training
    Progress"), whose redraw has no newline, so the next step's line follows the bar."""
    out = io.StringIO()
    bar = tqdm(total=total, initial=1, desc="Training Progress", file=out, mininterval=0)
    for step, metrics in enumerate(steps, 1):
        print(verl_concat_dict_to_str(metrics, step=step), file=out, flush=True)
        bar.update(1)
    bar.close()
    return out.getvalue().encode()


# -- OpenRLHF --------------------------------------------------------------------------------------

def openrlhf_tqdm(steps_per_epoch: list[list[dict[str, float]]]) -> bytes:
    """The SFT/RM/DPO/KTO trainers' step bar (openrlhf/trainer/sft_trainer.py at
    OPENRLHF_COMMIT): ``tqdm(range(len(loader)), desc="Train step of epoch %d" % epoch)``,
    then per micro-batch ``step_bar.set_postfix(logs_dict); step_bar.update()``."""
    out = io.StringIO()
    for epoch, steps in enumerate(steps_per_epoch):
        step_bar = tqdm(range(len(steps)), desc="Train step of epoch %d" % epoch, file=out,  # noqa: UP031 - theirs
                        mininterval=0)
        for logs_dict in steps:
            step_bar.set_postfix(logs_dict)
            step_bar.update()
        step_bar.close()
    return out.getvalue().encode()


def openrlhf_ppo_lines(statuses: list[dict[str, float]]) -> bytes:
    """The PPO trainer's log (openrlhf/trainer/ppo_trainer.py at OPENRLHF_COMMIT:
    ``logger.info(f"✨ Global step {global_step}: {log_status}")``), through OpenRLHF's
    logging format (openrlhf/utils/logging_utils.py)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(
        "%(levelname)s %(asctime)s %(filename)s:%(lineno)d] %(message)s", "%m-%d %H:%M:%S"))
    logger = logging.getLogger("openrlhf-fixture")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for global_step, log_status in enumerate(statuses, 1):
        logger.info(f"✨ Global step {global_step}: {log_status}")
    return out.getvalue().encode()


def sft_logs(n: int, nan_at: int | None = None) -> list[dict[str, float]]:
    """``logs_dict`` of the SFT trainer: gpt_loss, lr, grad_norm."""
    return [{"gpt_loss": math.nan if i == nan_at else 1.5 - 0.01 * i, "lr": 1e-5,
             "grad_norm": 0.5} for i in range(1, n + 1)]
