"""Learning curves and results tables from the scripts' TensorBoard logs.

    python -m benchmarks.report runs/                       # every run under runs/
    python -m benchmarks.report runs/ --out benchmarks/results/mujoco
    python -m benchmarks.report runs_a/ runs_b/ --out report/      # runs from several places, combined

A run is a directory `{env_id}__{exp_name}__{seed}__{time}` (or `...__{time}-N` when several runs started in
the same second) holding event files (the scripts' `runs/` layout). Runs are grouped by env and script
(exp_name); for each env the report draws the mean episodic return over seeds with a 95% bootstrap interval
against env steps and against wall time (PNG), and writes a markdown table: the budget in env steps, the
number of seeds, the return of the last 100 training episodes (mean +- std over seeds, ddof=1, per-seed values),
the final evaluation with the deterministic action where the runs made one (--eval-episodes), wall time and
median SPS, and each published figure (benchmarks/reference.py) beside the result of the metric it used; the
best training mean per env is bold. Only complete runs count: a run that stopped before its budget (read from the run's logged hyperparameters), or
finished no episode, and a run that failed (a benchmarks.run manifest.json in the directories says so) are
listed under the table instead. Across envs, per script: the IQM and mean of normalised scores with
stratified-bootstrap intervals (rliable), as a table and aggregate.png.
"""

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.reference import EVALUATION, RETURNS, TRAINING

# Score normalisation for the aggregate, (low, high) -> 0 and 1, by env id. Classic control: the return's range.
# MuJoCo: D4RL's random and expert reference returns (Fu et al. 2020, arXiv 2004.07219). Atari: random and
# human scores (Mnih et al. 2015), i.e. human-normalised scores.
NORMALISATION = {
    "CartPole-v1": (0.0, 500.0),
    "Acrobot-v1": (-500.0, 0.0),
    "MountainCar-v0": (-200.0, 0.0),
    "HalfCheetah-v5": (-280.18, 12135.0),
    "Hopper-v5": (-20.27, 3234.3),
    "Walker2d-v5": (1.63, 4592.3),
    "Pong-v5": (-20.7, 14.6),
    "Breakout-v5": (1.7, 30.5),
    "BeamRider-v5": (363.9, 16926.5),
}


def normalised(env_id: str, value: float) -> float:
    """A return on NORMALISATION's scale for `env_id` (0: the range's low end, 1: its high end); raw without one."""
    low, high = NORMALISATION.get(env_id, (0.0, 1.0))
    return (value - low) / (high - low)


@dataclass
class Args:
    runs_dirs: tyro.conf.Positional[tuple[str, ...]]
    """directories holding the runs (searched recursively for event files); several are combined"""
    out: str | None = None
    """where to write the PNGs and results.md (default: the first RUNS_DIR/report)"""
    last: int = 100
    """the final return of a run is the mean of its last this many episodes"""


@dataclass
class Run:
    """One run's logged scalars: episodes as (global step, wall seconds since the run's start, return); its budget
    (num_iterations * batch_size * world_size from the logged hyperparameters; 0 if unknown) and the last step it
    logged."""

    path: str
    env_id: str
    exp_name: str
    seed: int
    start: tuple[int, int]
    episodes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    sps: list[float] = field(default_factory=list)
    budget: int = 0
    last_step: int = 0
    eval_returns: list[float] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether the run trained its whole budget (when the budget is known) and finished an episode."""
        return len(self.episodes) > 0 and self.last_step >= self.budget


def logged_budget(acc: EventAccumulator) -> int:
    """num_iterations * batch_size * world_size from the `hyperparameters` text the scripts log (a markdown table;
    world_size, the torchrun processes that each step batch_size, is 1 when not logged); 0 if absent."""
    if "hyperparameters/text_summary" not in acc.Tags().get("tensors", []):
        return 0
    text = acc.Tensors("hyperparameters/text_summary")[-1].tensor_proto.string_val[0].decode()  # a resume's own
    table = dict(re.findall(r"\|(\w+)\|([^|]*)\|", text))
    try:
        return int(table["num_iterations"]) * int(table["batch_size"]) * int(table.get("world_size", 1))
    except (KeyError, ValueError):
        return 0


def load_run(path: str) -> Run | None:
    """Read one run directory with tensorboard's event reader; None if its name is not a script run name."""
    parts = os.path.basename(os.path.normpath(path)).split("__")
    started = re.fullmatch(r"(\d+)(?:-(\d+))?", parts[3]) if len(parts) == 4 else None
    if not started or not parts[2].lstrip("-").isdigit():
        return None
    acc = EventAccumulator(path, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    run = Run(path, parts[0], parts[1], int(parts[2]), (int(started[1]), int(started[2] or 1)))
    run.budget = logged_budget(acc)
    if "charts/episodic_return" in tags:
        events = acc.Scalars("charts/episodic_return")
        start = min(e.wall_time for e in events)
        if "charts/SPS" in tags:
            start = min(start, acc.Scalars("charts/SPS")[0].wall_time)
        run.episodes = np.array([(e.step, e.wall_time - start, e.value) for e in events])
    if "eval/episodic_return_greedy" in tags:
        run.eval_returns = [e.value for e in acc.Scalars("eval/episodic_return_greedy")]
    if "charts/SPS" in tags:
        sps = acc.Scalars("charts/SPS")
        run.sps, run.last_step = [e.value for e in sps], int(sps[-1].step)
    return run


def load_runs(*runs_dirs: str) -> list[Run]:
    """Every run under the `runs_dirs`, complete or not, sorted by env, script and seed; of runs repeating an
    (env, script, seed), the latest."""
    dirs = {os.path.dirname(str(p)) for d in runs_dirs for p in Path(d).rglob("events.out.tfevents.*")}
    latest = {}  # a repeated (env, script, seed) counts once: its latest run (the name ends with its start time)
    for run in sorted(filter(None, map(load_run, dirs)), key=lambda r: r.start):
        latest[(run.env_id, run.exp_name, run.seed)] = run
    return [latest[k] for k in sorted(latest)]


def failed_runs(*runs_dirs: str) -> list[str]:
    """The runs that benchmarks.run's manifests (manifest.json under the `runs_dirs`) record as failed, one line
    each: script, env, seed, exit status and log."""
    lines = []
    for path in sorted(p for d in runs_dirs for p in Path(d).rglob("manifest.json")):
        for key, entry in sorted(json.loads(path.read_text()).items()):
            if entry.get("status") == "failed":
                lines.append(f"{key}: failed (exit {entry.get('returncode')}), see {entry.get('log')}")
    return lines


def not_counted(runs: list[Run]) -> list[str]:
    """One line per run left out of the results because it is incomplete."""
    lines = []
    for r in runs:
        if not len(r.episodes):
            lines.append(f"{r.exp_name}/{r.env_id}/seed{r.seed}: no finished episode ({r.last_step:,} steps logged)")
        elif not r.complete:
            lines.append(f"{r.exp_name}/{r.env_id}/seed{r.seed}: incomplete ({r.last_step:,} of {r.budget:,} steps)")
    return lines


def steps_text(steps: int) -> str:
    """An env-step budget as the tables write it: 500k, 1M, 10M, 4,096."""
    for unit, name in ((1_000_000, "M"), (1_000, "k")):
        if steps and steps % unit == 0:
            return f"{steps // unit}{name}"
    return f"{steps:,}"


def final_return(run: Run, last: int = 100) -> float:
    """Mean return of the run's last `last` episodes."""
    return float(run.episodes[-last:, 2].mean())


def smoothed_curve(run: Run, grid: np.ndarray, x_column: int = 0, window: int = 20) -> np.ndarray:
    """The mean return of the last `window` episodes finished by each grid point (NaN before the first)."""
    x, returns = run.episodes[:, x_column], run.episodes[:, 2]
    cumulative = np.concatenate([[0.0], np.cumsum(returns)])
    n = np.searchsorted(x, grid, side="right")  # episodes finished by each grid point
    lo = np.maximum(n - window, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (cumulative[n] - cumulative[lo]) / (n - lo), np.nan)


def mean_and_interval(
    curves: np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds (axis 0) and its 95% percentile-bootstrap interval (seeds resampled with replacement,
    as seaborn's default error band). Returns (mean, low, high), each [T]; NaN entries are ignored."""
    rng = np.random.default_rng(seed)
    n = curves.shape[0]
    samples = curves[rng.integers(0, n, size=(resamples, n))]  # [resamples, n, T]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (before any episode ended)
        means = np.nanmean(samples, axis=1)
        low, high = np.nanpercentile(means, [2.5, 97.5], axis=0)
        return np.nanmean(curves, axis=0), low, high


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed); imported only when plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seeds(n: int) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} seed" + ("" if n == 1 else "s")


def plot_env(env_id: str, runs: list[Run], out_dir: str) -> list[str]:
    """Two PNGs for one env: mean return (95% interval over seeds) against steps and against wall time."""
    plt = pyplot()
    written = []
    for x_column, xlabel, suffix in ((0, "environment steps", "steps"), (1, "wall time (s)", "walltime")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for exp_name in sorted({r.exp_name for r in runs}):
            group = [r for r in runs if r.exp_name == exp_name]
            end = min(r.episodes[-1, x_column] for r in group)
            grid = np.linspace(0, end, 200)
            mean, low, high = mean_and_interval(np.stack([smoothed_curve(r, grid, x_column) for r in group]))
            ax.plot(grid, mean, label=f"{exp_name} ({seeds(len(group))})")
            ax.fill_between(grid, low, high, alpha=0.2)
        ax.set_title(env_id.split(":")[-1])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("episodic return (mean of last 20 episodes)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        # env ids may hold "/" (namespaces) or ":" (gymnasium's module:EnvId): not in file names
        path = os.path.join(out_dir, f"{re.sub(r'[^A-Za-z0-9._-]', '_', env_id)}_{suffix}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def mean_and_std(values: list[float]) -> str:
    """mean ± std over seeds (ddof=1); the std is left out for a single seed."""
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values.mean():.2f}"


def results_table(runs: list[Run], last: int = 100) -> str:
    """Markdown: one row per (env, script) of complete runs: the budget, the number of seeds, the training metric
    (return of the last `last` episodes) and the evaluation metric (deterministic action, when the runs evaluated),
    each as mean ± std over seeds (ddof=1) with the published figure of the same metric beside it, wall time and SPS;
    the best training mean per env in bold."""
    lines = [
        f"| env | script | steps | seeds | training: return, last {last} episodes (mean ± std over seeds, ddof=1) "
        "| per seed | published, same metric | evaluation: deterministic action (mean ± std over seeds, ddof=1) "
        "| published, same metric | wall time (min) | median SPS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = {}
    for env_id, exp_name in sorted({(r.env_id, r.exp_name) for r in runs}):
        group = [r for r in runs if (r.env_id, r.exp_name) == (env_id, exp_name)]
        rows[(env_id, exp_name)] = group, np.array([final_return(r, last) for r in group])
    best = {env: max(finals.mean() for (e, _), (_, finals) in rows.items() if e == env) for env, _ in rows}
    for (env_id, exp_name), (group, finals) in rows.items():
        wall = np.mean([r.episodes[-1, 1] for r in group]) / 60
        sps = np.median([np.median(r.sps) for r in group if r.sps]) if any(r.sps for r in group) else float("nan")
        ref = RETURNS.get((exp_name, env_id))
        published = {metric: ref.text() if ref and ref.metric == metric else "-" for metric in (TRAINING, EVALUATION)}
        per_seed = ", ".join(f"{r.seed}: {f:.2f}" for r, f in zip(group, finals))
        budgets = sorted({r.budget or r.last_step for r in group})
        steps = " / ".join(steps_text(b) for b in budgets)
        mean = mean_and_std(finals)
        mean = f"**{mean}**" if finals.mean() == best[env_id] else mean
        evaluated = [np.mean(r.eval_returns) for r in group if r.eval_returns]
        eval_text = f"{mean_and_std(evaluated)} ({seeds(len(evaluated))})" if evaluated else "-"
        lines.append(
            f"| {env_id} | {exp_name} | {steps} | {len(group)} | {mean} | {per_seed} | {published[TRAINING]} "
            f"| {eval_text} | {published[EVALUATION]} | {wall:.1f} | {sps:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def aggregate(runs: list[Run], last: int = 100, reps: int = 2000) -> dict[str, dict]:
    """Per script, the IQM and the mean of normalised final returns across envs and seeds, with 95%
    stratified-bootstrap intervals (rliable; Agarwal et al. 2021, arXiv 2108.13264).

    Only envs in NORMALISATION count, and per script the seeds that every one of its envs has. Returns
    {exp_name: {"envs": [...], "seeds": n, "iqm": (point, low, high), "mean": (point, low, high)}}.
    """
    from rliable import library as rly
    from rliable import metrics

    scores, envs_of = {}, {}
    for exp_name in sorted({r.exp_name for r in runs}):
        group = [r for r in runs if r.exp_name == exp_name and r.env_id in NORMALISATION]
        env_ids = sorted({r.env_id for r in group})
        seeds = (
            sorted(set.intersection(*({r.seed for r in group if r.env_id == e} for e in env_ids))) if env_ids else []
        )
        if not seeds:
            continue
        by_key = {(r.env_id, r.seed): final_return(r, last) for r in group}
        low, high = np.array([NORMALISATION[e] for e in env_ids]).T
        raw = np.array([[by_key[(e, s)] for e in env_ids] for s in seeds])  # [seeds, envs]
        scores[exp_name], envs_of[exp_name] = (raw - low) / (high - low), env_ids
    if not scores:
        return {}
    point, interval = rly.get_interval_estimates(
        scores, lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)]), reps=reps
    )
    return {
        name: {
            "envs": envs_of[name],
            "seeds": scores[name].shape[0],
            "iqm": (point[name][0], interval[name][0, 0], interval[name][1, 0]),
            "mean": (point[name][1], interval[name][0, 1], interval[name][1, 1]),
        }
        for name in scores
    }


def aggregate_table_and_plot(result: dict, out_dir: str) -> str:
    """Markdown table of `aggregate`'s result, and aggregate.png (point estimates with their intervals)."""
    plt = pyplot()
    lines = [
        "| script | envs | seeds | IQM [95% CI] | mean [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for name, r in result.items():
        iqm, mean = r["iqm"], r["mean"]
        lines.append(
            f"| {name} | {', '.join(r['envs'])} | {r['seeds']} | {iqm[0]:.3f} [{iqm[1]:.3f}, {iqm[2]:.3f}] "
            f"| {mean[0]:.3f} [{mean[1]:.3f}, {mean[2]:.3f}] |"
        )
    fig, axes = plt.subplots(1, 2, figsize=(8, 0.6 * len(result) + 1.5), sharey=True)
    for ax, metric in zip(axes, ("iqm", "mean")):
        for i, (name, r) in enumerate(result.items()):
            point, low, high = r[metric]
            ax.errorbar(point, i, xerr=[[point - low], [high - point]], fmt="o", capsize=4)
        ax.set_yticks(range(len(result)), list(result))
        ax.set_title(f"{metric.upper() if metric == 'iqm' else 'mean'} of normalised score")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "aggregate.png"), dpi=100)
    plt.close(fig)
    return "\n".join(lines) + "\n"


def main(args: Args) -> None:
    if not args.runs_dirs:
        raise SystemExit(
            "benchmarks.report: error: name the runs folder(s), e.g. python -m benchmarks.report benchmarks/runs/classic"
        )
    for d in args.runs_dirs:
        if not os.path.isdir(d):
            raise SystemExit(f"benchmarks.report: error: {d}: no such directory")
    every_run = load_runs(*args.runs_dirs)
    runs = [r for r in every_run if r.complete]
    left_out = not_counted(every_run) + failed_runs(*args.runs_dirs)
    if not runs:
        raise SystemExit(f"benchmarks.report: error: no complete runs under {' '.join(args.runs_dirs)}")
    out = args.out or os.path.join(args.runs_dirs[0], "report")
    os.makedirs(out, exist_ok=True)
    table = results_table(runs, args.last)
    if left_out:
        table += "\nNot counted above (incomplete or failed):\n\n" + "".join(f"- {line}\n" for line in left_out)
    images = [
        p
        for env_id in sorted({r.env_id for r in runs})
        for p in plot_env(env_id, [r for r in runs if r.env_id == env_id], out)
    ]
    summary = aggregate(runs, args.last)
    aggregate_md = ""
    if summary:
        aggregate_md = (
            "\n## Aggregate across envs\n\nNormalised score: (return - low) / (high - low), bounds in "
            "benchmarks/report.py's NORMALISATION. IQM and mean with 95% stratified-bootstrap intervals (rliable).\n\n"
            + aggregate_table_and_plot(summary, out)
            + "\n![aggregate](aggregate.png)\n"
        )
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(
            "# Results\n\n"
            + table
            + aggregate_md
            + "\n"
            + "".join(f"![{Path(p).stem}]({Path(p).name})\n" for p in images)
        )
    print(table + aggregate_md)
    print(f"wrote {out}/results.md and {len(images)} PNGs")


if __name__ == "__main__":
    main(tyro.cli(Args))
