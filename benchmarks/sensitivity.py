"""How much does each algorithm's return depend on its hyperparameters? Each main hyperparameter scaled from the
script's default, the others at their defaults, every setting on every env for several seeds.

    python -m benchmarks.sensitivity --preset classic                      # CartPole-v1, Acrobot-v1, 500k steps
    python -m benchmarks.sensitivity --preset mujoco --env-ids Hopper-v5 --total-timesteps 300000

Per script (the preset's PPO script, trpo_baseline.py, a2c_baseline.py) the hyperparameters of HYPERPARAMETERS, each
multiplied by --multipliers (1/4, 1/2, 1, 2, 4; integers rounded, at least 1); each setting runs through
benchmarks.run's own code (run_one), one folder a run under OUT/{flag}/x{multiplier}/{script}/{env}/seed{S},
--workers at a time; a finished run is not run again. A run's score is its final return (the last 100 training
episodes) normalised by benchmarks.report's ranges. Output: OUT/sensitivity.png (one panel per hyperparameter, the
normalised return against the multiplier, one line per script, mean over envs and seeds with the seeds' range as a
band) and OUT/sensitivity.md (every setting's score and, per script, the share of its settings whose score is within
10% of its best setting's).
"""

import importlib
import json
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from benchmarks import run as bench_run
from benchmarks.report import final_return, load_run, normalised, pyplot

ROOT = Path(__file__).resolve().parents[1]
# The main hyperparameters of each script: PPO's learning rate, clip coefficient, epochs and minibatches; TRPO's
# (critic) learning rate, trust-region size and conjugate-gradient damping; A2C's learning rate and n-steps.
HYPERPARAMETERS = {
    "ppo_discrete.py": ("learning_rate", "clip_coef", "update_epochs", "num_minibatches"),
    "ppo_continuous.py": ("learning_rate", "clip_coef", "update_epochs", "num_minibatches"),
    "trpo_baseline.py": ("learning_rate", "max_kl", "cg_damping"),
    "a2c_baseline.py": ("learning_rate", "num_steps"),
}
PRESETS = {
    "classic": (("ppo_discrete.py", "trpo_baseline.py", "a2c_baseline.py"), ("CartPole-v1", "Acrobot-v1"), 500_000),
    "mujoco": (("ppo_continuous.py", "trpo_baseline.py", "a2c_baseline.py"), ("Hopper-v5",), 300_000),
}


@dataclass
class Args:
    preset: Literal["classic", "mujoco"] = "classic"
    """classic: ppo_discrete, trpo_baseline, a2c_baseline on CartPole-v1 and Acrobot-v1, 500k steps; mujoco:
    ppo_continuous, trpo_baseline, a2c_baseline on Hopper-v5, 300k steps"""
    scripts: tuple[str, ...] | None = None
    """override the preset's scripts"""
    env_ids: tuple[str, ...] | None = None
    """override the preset's env ids"""
    hyperparameters: tuple[str, ...] | None = None
    """only these hyperparameters (Args field names), of the scripts that have them in HYPERPARAMETERS"""
    multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    """factors applied to each hyperparameter's default"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds of every setting"""
    total_timesteps: int | None = None
    """override the preset's budget"""
    workers: int = len(os.sched_getaffinity(0))
    """runs at once (each with one torch thread)"""
    out: str | None = None
    """output folder (default: benchmarks/sensitivity/{preset})"""


def defaults(script: str) -> dict:
    """The script's Args defaults (the script imported as a module)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(Path(script).stem)
    return vars(module.Args())


def setting_value(default, multiplier: float):
    """default x multiplier; an integer hyperparameter rounded, at least 1."""
    return max(1, round(default * multiplier)) if isinstance(default, int) else default * multiplier


def plan(args: Args) -> tuple[list[tuple[str, str, float, bench_run.Run]], str]:
    """[(script, hyperparameter, multiplier, run)] of the grid, and OUT. Raises SystemExit (one line) on a script or
    hyperparameter the grid does not know."""
    scripts, env_ids, budget = PRESETS[args.preset]
    scripts, env_ids = args.scripts or scripts, args.env_ids or env_ids
    unknown = [s for s in scripts if s not in HYPERPARAMETERS]
    if unknown:
        raise SystemExit(f"benchmarks.sensitivity: error: --scripts {' '.join(unknown)}: not in HYPERPARAMETERS")
    known = {h for s in scripts for h in HYPERPARAMETERS[s]}
    if args.hyperparameters and not set(args.hyperparameters) <= known:
        missing = sorted(set(args.hyperparameters) - known)
        raise SystemExit(f"benchmarks.sensitivity: error: --hyperparameters {' '.join(missing)}: none of the scripts")
    out = os.path.abspath(args.out or os.path.join(ROOT, "benchmarks", "sensitivity", args.preset))
    grid = []
    for script in scripts:
        default = defaults(script)
        for name in HYPERPARAMETERS[script]:
            if args.hyperparameters and name not in args.hyperparameters:
                continue
            for m in args.multipliers:
                value = setting_value(default[name], m)
                plan_args = bench_run.Args(
                    scripts=(script,),
                    env_ids=env_ids,
                    seeds=args.seeds,
                    total_timesteps=args.total_timesteps or budget,
                    script_args=f"--{name.replace('_', '-')} {value}",
                    out=os.path.join(out, name, f"x{m:g}"),  # benchmarks.run adds {script}/{env}/seed{S}
                )
                grid += [(script, name, m, r) for r in bench_run.plan(plan_args)[0]]
    return grid, out


def score(entry: dict | None, env_id: str) -> float:
    """A finished run's final return normalised by benchmarks.report's range (raw without one); nan if it failed."""
    if entry is None or entry["status"] != "done" or not entry["tensorboard"]:
        return float("nan")
    return normalised(env_id, final_return(load_run(entry["tensorboard"])))


def summarise(grid: list, entries: dict, out: str) -> str:
    """The figure and the markdown table (see the module docstring); returns the table."""
    scores: dict[tuple[str, str, float], dict[int, list[float]]] = {}
    for script, name, m, run in grid:
        seeds = scores.setdefault((script, name, m), {})
        seeds.setdefault(run.seed, []).append(score(entries.get(run.cwd), run.env_id))
    mean = {key: float(np.nanmean([np.nanmean(v) for v in seeds.values()])) for key, seeds in scores.items()}
    lines = ["| script | hyperparameter | " + " | ".join(f"x{m:g}" for m in sorted({k[2] for k in mean})) + " |"]
    lines.append("|---|---|" + "---|" * len({k[2] for k in mean}))
    for script, name in dict.fromkeys((k[0], k[1]) for k in mean):
        cells = [f"{mean[(script, name, m)]:.3f}" for m in sorted({k[2] for k in mean if k[:2] == (script, name)})]
        lines.append(f"| {script} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "| script | settings within 10% of its best | best setting |", "|---|---|---|"]
    for script in dict.fromkeys(k[0] for k in mean):
        own = {k: v for k, v in mean.items() if k[0] == script and not np.isnan(v)}
        best_key = max(own, key=own.get)
        best = own[best_key]
        close = sum(v >= best - 0.1 * abs(best) for v in own.values())
        lines.append(
            f"| {script} | {close}/{len(own)} ({close / len(own):.0%}) | {best_key[1]} x{best_key[2]:g}: {best:.3f} |"
        )
    table = "\n".join(lines)
    plt = pyplot()
    names = list(dict.fromkeys(k[1] for k in mean))
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for script in dict.fromkeys(k[0] for k in mean if k[1] == name):
            ms = sorted(k[2] for k in mean if k[:2] == (script, name))
            per_seed = [[np.nanmean(v) for v in scores[(script, name, m)].values()] for m in ms]
            ax.plot(ms, [mean[(script, name, m)] for m in ms], marker="o", label=Path(script).stem)
            ax.fill_between(ms, [np.nanmin(s) for s in per_seed], [np.nanmax(s) for s in per_seed], alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("multiplier of the default")
    axes[0][0].set_ylabel("normalised final return")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "sensitivity.png"), dpi=100)
    Path(out, "sensitivity.md").write_text(table + "\n\n![sensitivity](sensitivity.png)\n")
    return table


def main(args: Args) -> str:
    """Run what is left of the grid, then write the figure and the table; returns the table."""
    if args.workers <= 0:
        raise SystemExit("benchmarks.sensitivity: error: --workers must be positive")
    grid, out = plan(args)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "runs.json")
    entries = json.loads(Path(path).read_text()) if os.path.isfile(path) else {}
    todo = [r for _, _, _, r in grid if entries.get(r.cwd, {}).get("status") != "done"]
    print(f"{len(grid)} runs, {len(grid) - len(todo)} already done", flush=True)
    stopping = threading.Event()
    running = [{} for _ in todo]  # one per run: run_one keys its process by script/env/seed, which settings share
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        try:
            results = pool.map(lambda i: bench_run.run_one(todo[i], stopping, running[i]), range(len(todo)))
            for run, entry in zip(todo, results):
                if entry is not None:
                    entries[run.cwd] = entry
                    Path(path).write_text(json.dumps(entries, indent=1))
                    print(f"{entry['status']} {run.cwd}", flush=True)
        except KeyboardInterrupt:  # the runs in flight checkpoint and stop; the same command resumes them
            stopping.set()
            for proc in [p for held in running for p in list(held.values())]:
                proc.send_signal(signal.SIGINT)
            raise SystemExit("stopped: run the same command again to resume the grid") from None
    table = summarise(grid, entries, out)
    print(table)
    return table


if __name__ == "__main__":
    main(tyro.cli(Args))
