"""Whole runs as polars frames: what ``report`` draws and ``diff`` compares.

A run is read by :func:`~trainguard.monitor.check.check_run` (the monitor's own parsers, field
maps and rules: every accepted form, every skip counted) with its evaluated steps collected as
columns, one row per metric value; polars then does the grouping, thinning and comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trainguard.control import CONTROL_FILENAME, read_stop_request
from trainguard.exceptions import ConfigError
from trainguard.monitor.check import CheckOptions, Columns, RunCheck, check_run, read_metadata
from trainguard.monitor.sinks.report_model import MetricPlot, RankSeries, RunReport, StopMark

__all__ = ["DiffResult", "build_report", "diff_runs", "frame", "write_run_report"]

#: Points drawn per rank and metric; a longer series is thinned to its extremes per bucket.
MAX_POINTS = 600
#: Metrics plotted when the rules watch none that the run has (the first ones seen).
FALLBACK_PLOTS = 12
MAX_RANKS_DRAWN = 8


def frame(columns: Columns) -> pl.DataFrame:
    """The collected columns as a frame: ``step, rank, name, value, time, kind``."""

    def numbers(values: Any, dtype: Any) -> pl.Series:
        # The typed arrays go in through numpy views, not copied as objects.
        return pl.Series(np.frombuffer(values, dtype=dtype) if len(values)
                         else np.zeros(0, dtype))

    def coded(listed: list[str], codes: Any) -> pl.Series:
        # A categorical of the few distinct strings, gathered by the rows' codes: no string
        # made a row.
        return pl.Series(listed, dtype=pl.Categorical)[numbers(codes, np.uint32)]

    return pl.DataFrame({
        "step": numbers(columns.steps, np.int64),
        "rank": numbers(columns.ranks, np.int64),
        "name": coded(columns.name_list, columns.name_codes),
        "value": numbers(columns.values, np.float64),
        "time": numbers(columns.times, np.float64),
        "kind": coded(columns.kind_list, columns.kind_codes),
    })


def _thin(steps: np.ndarray, values: np.ndarray, max_points: int) -> tuple[list[int],
                                                                           list[float]]:
    """Steps and values of one sorted finite series, at most ``max_points`` of them: each
    bucket (consecutive points, ``i * buckets // n``) keeps its lowest value (the first of
    equal ones) and its highest (the last), in step order, so a flat stretch is drawn from its
    start to its end. On the arrays, with no frame copied: a run's series is most of its
    rows."""
    n = len(values)
    if n <= max_points:
        return steps.tolist(), values.tolist()
    buckets = max_points // 2
    # Bucket k holds the points i with i * buckets // n == k: from ceil(k * n / buckets) on.
    bounds = ((np.arange(buckets + 1) * n + buckets - 1) // buckets).tolist()
    keep: list[int] = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        segment = values[start:end]
        low, high = start + int(segment.argmin()), end - 1 - int(segment[::-1].argmax())
        keep += (low, high) if low < high else (high, low) if high < low else (low,)
    return steps[keep].tolist(), values[keep].tolist()


def _series(df: pl.DataFrame, rank: int) -> RankSeries:
    steps = df["step"].to_numpy()
    values = df["value"].to_numpy()
    if len(steps) > 1 and not bool((steps[1:] >= steps[:-1]).all()):
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
    finite = np.isfinite(values)
    if finite.all():
        nonfinite: list[int] = []
    else:
        nonfinite = steps[~finite].tolist()
        steps, values = steps[finite], values[finite]
    thin_steps, thin_values = _thin(steps, values, MAX_POINTS)
    stats = ((float(values[0]), float(values[-1]), float(values.min()), float(values.max()))
             if len(values) else (None, None, None, None))
    return RankSeries(rank, thin_steps, thin_values, nonfinite, df.height, *stats)


def _plots(df: pl.DataFrame, result: RunCheck) -> list[MetricPlot]:
    train = df.filter(pl.col("kind") == "train") if df.height else df
    train = train.select("step", "rank", "name", "value")  # the plots need no more
    seen = (train["name"].cast(pl.Utf8).unique(maintain_order=True).to_list()
            if train.height else [])
    names = [m for m in result.watched if m in set(seen)] or seen[:FALLBACK_PLOTS]
    alerts = [a for a in result.verdict.alerts if a.state == "firing"]
    plots = []
    for name in names:
        sub = train.filter(pl.col("name") == name)
        ranks = sorted(sub["rank"].unique().to_list())[:MAX_RANKS_DRAWN]
        series = [_series(sub.filter(pl.col("rank") == r), r) for r in ranks]
        plots.append(MetricPlot(name, series, [a for a in alerts if a.metric == name]))
    return plots


def _stop(run: str, result: RunCheck) -> StopMark | None:
    path = Path(run)
    if path.is_dir():
        request = read_stop_request(path / CONTROL_FILENAME)
        if request is not None:
            return StopMark(request.step, request.rule, request.reason, True)
    for alert in result.verdict.alerts:
        if alert.state == "firing" and alert.action == "stop":
            return StopMark(alert.step, alert.rule, alert.message, False)
    return None


def build_report(result: RunCheck) -> RunReport:
    """What the report says of one checked run (collected with ``collect=True``)."""
    columns = result.columns if result.columns is not None else Columns()
    df = frame(columns)
    v = result.verdict
    steps = (int(df["step"].min()), int(df["step"].max())) if df.height else None  # type: ignore[arg-type]
    ranks = sorted(df["rank"].unique().to_list()) if df.height else []
    streams = {name: {"lines": st.lines, "skips": dict(st.skips)}
               for name, st in result.streams.items()}
    skips = dict(v.skips)
    for st in result.streams.values():
        for reason, count in st.skips.items():
            skips[reason] = skips.get(reason, 0) + count
    return RunReport(run=result.run, status=v.status, exit_code=v.exit_code, events=v.events,
                     records=v.records, trainer=result.trainer, metadata=result.metadata,
                     plots=_plots(df, result), alerts=list(v.alerts), stop=_stop(result.run,
                                                                                 result),
                     skips=skips, streams=streams, problems=list(v.problems), ranks=ranks,
                     steps=steps)


def write_run_report(results: list[RunCheck], output: str) -> None:
    """Write the report of ``results`` to ``output``: ``.html`` or ``.md``."""
    suffix = Path(output).suffix.lower()
    reports = [build_report(r) for r in results]
    if suffix in (".html", ".htm"):
        from trainguard.monitor.sinks.html_report import render_html

        text = render_html(reports)
    elif suffix in (".md", ".markdown"):
        from trainguard.monitor.sinks.md_report import render_markdown

        text = render_markdown(reports)
    else:
        raise ConfigError(f"-o {output}: the report is .html or .md; name the file so")
    target = Path(output)
    tmp = target.with_name(target.name + ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        raise ConfigError(f"cannot write the report {output}: {exc.strerror}") from None


# -- diff ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Divergence:
    """The first step where one metric of one rank differs beyond the tolerance."""

    metric: str
    rank: int
    step: int
    a: float
    b: float


@dataclass(slots=True)
class DiffResult:
    """What differs between two runs."""

    run_a: str
    run_b: str
    divergences: list[Divergence]
    same: list[str]
    only_a: list[str]
    only_b: list[str]
    common_steps: int
    config: list[tuple[str, Any, Any]] = field(default_factory=list)
    #: Whether either run has a run_metadata.json (an empty diff of nothing says so).
    has_config: bool = False

    @property
    def differs(self) -> bool:
        """A metric diverged or the config differs."""
        return bool(self.divergences or self.config)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (non-finite values as strings)."""
        def num(x: float) -> float | str:
            return x if x == x and abs(x) != float("inf") else str(x)

        return {"run_a": self.run_a, "run_b": self.run_b, "common_steps": self.common_steps,
                "divergences": [{"metric": d.metric, "rank": d.rank, "step": d.step,
                                 "a": num(d.a), "b": num(d.b)} for d in self.divergences],
                "same": self.same, "only_a": self.only_a, "only_b": self.only_b,
                "config": [{"key": k, "a": a, "b": b} for k, a, b in self.config]}

    def lines(self) -> list[str]:
        """The text ``trainguard diff`` prints."""
        out = [f"{self.run_a} vs {self.run_b}: {self.common_steps} steps in common"]
        for d in self.divergences:
            out.append(f"  {d.metric} (rank {d.rank}): diverges at step {d.step}: "
                       f"{d.a:.6g} vs {d.b:.6g}")
        if self.same:
            out.append(f"  same within tolerance: {', '.join(self.same)}")
        if self.only_a:
            out.append(f"  only in {self.run_a}: {', '.join(self.only_a)}")
        if self.only_b:
            out.append(f"  only in {self.run_b}: {', '.join(self.only_b)}")
        if self.config:
            out.append("  config differences (run_metadata.json):")
            out.extend(f"    {k}: {a!r} -> {b!r}" for k, a, b in self.config)
        else:
            out.append("  config: the same" if self.has_config else
                       "  config: no run_metadata.json to compare")
        return out


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


#: Metadata that differs between any two runs by nature, not by setting.
_VOLATILE = frozenset({"run_id", "start_time", "pid", "host", "session_id", "session_start"})


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Flattened keys whose values differ (missing on one side included), volatile ones left
    out (run id, writer session, start times, pid, host)."""
    fa, fb = _flatten(a), _flatten(b)
    out = []
    for key in sorted(fa.keys() | fb.keys()):
        if key.split(".")[0] in _VOLATILE:
            continue
        if fa.get(key, "<missing>") != fb.get(key, "<missing>"):
            out.append((key, fa.get(key, "<missing>"), fb.get(key, "<missing>")))
    return out


def diff_runs(run_a: str, run_b: str, *, rtol: float = 1e-3, atol: float = 1e-6,
              field_maps: list[str] | None = None) -> DiffResult:
    """Compare two runs metric by metric and rank by rank, on the steps both have."""
    # Read as check reads them (the rules' alerts are not part of a diff).
    options = CheckOptions(field_maps=list(field_maps or []))
    frames = []
    for run in (run_a, run_b):
        columns = check_run(run, options, collect=True).columns
        assert columns is not None
        frames.append(frame(columns).filter(pl.col("kind") == "train")
                      .group_by("name", "rank", "step").agg(pl.col("value").last())
                      .with_columns(pl.col("name").cast(pl.Utf8)))
    fa, fb = frames
    names_a = set(fa["name"].unique().to_list())
    names_b = set(fb["name"].unique().to_list())
    joined = fa.join(fb, on=["name", "rank", "step"], suffix="_b")
    joined = joined.with_columns(
        (((pl.col("value") - pl.col("value_b")).abs()
          > atol + rtol * pl.col("value_b").abs())
         | (pl.col("value").is_nan() != pl.col("value_b").is_nan())
         | (pl.col("value").is_infinite() & (pl.col("value") != pl.col("value_b"))))
        .alias("diverged"))
    first = (joined.filter(pl.col("diverged")).sort("step")
             .group_by("name", "rank", maintain_order=True).first().sort("name", "rank"))
    divergences = [Divergence(r["name"], r["rank"], r["step"], r["value"], r["value_b"])
                   for r in first.iter_rows(named=True)]
    diverged_names = {d.metric for d in divergences}
    common = names_a & names_b
    result = DiffResult(run_a, run_b, divergences,
                        sorted(common - diverged_names), sorted(names_a - names_b),
                        sorted(names_b - names_a),
                        joined.select("step").n_unique() if joined.height else 0)
    meta_a, meta_b = read_metadata(run_a), read_metadata(run_b)
    result.has_config = bool(meta_a or meta_b)
    result.config = config_differences(meta_a, meta_b)
    return result
