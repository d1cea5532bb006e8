"""Tune a script's flags with Optuna: a seeded TPE sampler, a pruner, the study in an SQLite file that resumes.

    python -m benchmarks.tune --script ppo_continuous.py --env-ids Hopper-v5 Walker2d-v5 --trials 40 --seeds 2 \\
        --total-timesteps 300000 --space learning_rate=log:1e-5:1e-2 clip_coef=float:0.1:0.4 update_epochs=int:2:20

A trial is one setting of the --space flags, run for every env id and seed (1..--seeds) through benchmarks.run's
own code path (run_one: a folder per run, OUT/trial{N}/{script}/{env}/seed{S}, its run.log and TensorBoard events,
a checkpoint), one after another. Its score is the mean over those runs of the return over the last 10% of training
normalised by benchmarks.report's ranges (0: the range's low end, 1: its high end; an env without a range counts its
raw return), as CleanRL's tuner does. After each run the mean so far is reported to the pruner (--pruner median:
Optuna's MedianPruner, hyperband, none), which can stop a trial that is clearly worse than the others before its
next run. A run that stops because its training turned non-finite (the scripts' one-line TrainingError) scores 0;
any other failure stops the study with the run's last line.

The study lives in --storage (default OUT/study.db): the same command again (after Ctrl-C, or with more --trials)
adds trials to it, and several processes or machines sharing the file run trials together (--workers runs that many
in this process). `optuna-dashboard sqlite:///OUT/study.db` opens it. At the end: the best trial as a command line,
the top 5 (OUT/tune.md) and Optuna's history and importance plots (OUT/history.png, OUT/importance.png).
"""

import ast
import json
import math
import os
import shlex
import signal
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from benchmarks import run as bench_run
from benchmarks.report import load_run, normalised

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("log", "float", "int", "cat")


@dataclass
class Args:
    script: str = "ppo_discrete.py"
    """the script to tune (a file name in the repository root)"""
    env_ids: tuple[str, ...] = ("CartPole-v1",)
    """the env ids every trial runs on"""
    space: tuple[str, ...] = ("learning_rate=log:1e-5:1e-2",)
    """the search space, one entry a flag: NAME=log:LOW:HIGH, NAME=float:LOW:HIGH, NAME=int:LOW:HIGH or
    NAME=cat:A,B,... (NAME as the script's Args field, e.g. learning_rate)"""
    trials: int = 20
    """trials to add to the study in this invocation"""
    seeds: int = 2
    """runs per env id in every trial, seeds 1..seeds"""
    total_timesteps: int = 100_000
    """env steps of every run"""
    script_args: str = ""
    """extra flags for every run, as one string"""
    pruner: Literal["median", "hyperband", "none"] = "median"
    """stops a trial whose intermediate score (after each run) is clearly worse than the others'"""
    startup_trials: int = 5
    """trials the median pruner lets finish before it prunes any"""
    enqueue: tuple[str, ...] = ()
    """trials to run first, each NAME=VALUE,NAME=VALUE (the script's defaults, say)"""
    workers: int = 1
    """trials run at once in this process (each run gets one torch thread)"""
    sampler_seed: int = 1
    """the TPE sampler's seed"""
    out: str | None = None
    """output folder (default: benchmarks/tune/{script}); the trials' runs and the study go there"""
    storage: str | None = None
    """the study's database: a file path or an Optuna storage URL (default: OUT/study.db)"""
    study_name: str | None = None
    """the study's name (default: {script}__{env ids})"""


@dataclass(frozen=True)
class Dimension:
    """One --space entry: the Args field `name`, its kind (log, float, int, cat) and its range or choices."""

    name: str
    kind: str
    values: tuple

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def script_fields(script: str) -> set[str]:
    """The field names of the script's Args dataclass, read from its source (nothing imported)."""
    tree = ast.parse((ROOT / script).read_text())
    args = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Args")
    return {node.target.id for node in args.body if isinstance(node, ast.AnnAssign)}


def parse_space(entries: tuple[str, ...], script: str) -> list[Dimension]:
    """--space entries as Dimensions. Raises SystemExit (one line) naming a malformed entry, a flag the script does
    not have, or an empty range."""
    fields, dims = script_fields(script), []
    for entry in entries:
        name, _, spec = entry.partition("=")
        kind, _, rest = spec.partition(":")
        bad = f"benchmarks.tune: error: --space {entry}: "
        if not name or kind not in KINDS or not rest:
            raise SystemExit(bad + "expected NAME=log|float|int:LOW:HIGH or NAME=cat:A,B,...")
        if name not in fields:
            raise SystemExit(bad + f"{script} has no flag --{name.replace('_', '-')}")
        if kind == "cat":
            dims.append(Dimension(name, kind, tuple(rest.split(","))))
            continue
        try:
            low, high = (int(v) if kind == "int" else float(v) for v in rest.split(":"))
        except ValueError:
            raise SystemExit(bad + f"LOW:HIGH must be two {'integers' if kind == 'int' else 'numbers'}") from None
        if not low < high or (kind == "log" and low <= 0):
            raise SystemExit(bad + ("LOW must be below HIGH" if low >= high else "a log range must be positive"))
        dims.append(Dimension(name, kind, (low, high)))
    if len({d.name for d in dims}) < len(dims):
        raise SystemExit("benchmarks.tune: error: --space names a flag twice")
    return dims


def suggest(trial, dim: Dimension):
    """The trial's value for one dimension (Optuna's suggest_* API)."""
    if dim.kind == "cat":
        return trial.suggest_categorical(dim.name, list(dim.values))
    if dim.kind == "int":
        return trial.suggest_int(dim.name, *dim.values)
    return trial.suggest_float(dim.name, *dim.values, log=dim.kind == "log")


def flags_of(params: dict) -> list[str]:
    """Trial parameters as command-line flags (NAME -> --name VALUE)."""
    return [part for name, value in params.items() for part in ("--" + name.replace("_", "-"), str(value))]


def normalised_score(tensorboard_dir: str, env_id: str, budget: int) -> float:
    """The mean return of the episodes in the last 10% of training, normalised by benchmarks.report's range for
    `env_id` (raw without one); nan if no episode ended there."""
    run = load_run(tensorboard_dir)
    episodes = run.episodes if run is not None else np.zeros((0, 3))
    late = episodes[episodes[:, 0] >= 0.9 * budget, 2] if len(episodes) else []
    if len(late) == 0:
        return float("nan")
    return normalised(env_id, float(np.mean(late)))


def trial_runs(args: Args, out: str, number: int, flags: list[str]) -> list[bench_run.Run]:
    """The trial's runs, planned by benchmarks.run (the same commands, one folder each under OUT/trial{N})."""
    plan_args = bench_run.Args(
        scripts=(args.script,),
        env_ids=args.env_ids,
        seeds=tuple(range(1, args.seeds + 1)),
        total_timesteps=args.total_timesteps,
        script_args=shlex.join([*shlex.split(args.script_args), *flags]),
        out=os.path.join(out, f"trial{number:04d}"),
    )
    return bench_run.plan(plan_args)[0]


def make_objective(args: Args, dims: list[Dimension], out: str, stopping: threading.Event, running: dict):
    """Optuna's objective: run the trial's runs one after another, report the mean score after each, prune."""
    import optuna

    def objective(trial) -> float:
        params = {dim.name: suggest(trial, dim) for dim in dims}
        scores = []
        for step, run in enumerate(trial_runs(args, out, trial.number, flags_of(params))):
            entry = bench_run.run_one(run, stopping, running)
            if entry is None or entry["status"] == "interrupted":
                raise KeyboardInterrupt
            if entry["status"] == "failed":
                last = Path(entry["log"]).read_text().strip().splitlines()[-1:] or [""]
                if "is not finite" not in last[0]:
                    raise SystemExit(f"benchmarks.tune: error: trial {trial.number}, {run.key}: {last[0]}")
                scores.append(0.0)  # training turned non-finite: the worst score
            else:
                score = normalised_score(entry["tensorboard"], run.env_id, args.total_timesteps)
                scores.append(0.0 if math.isnan(score) else score)
            trial.report(float(np.mean(scores)), step)
            if trial.should_prune():
                print(f"trial {trial.number}: pruned after {step + 1} run(s) at {np.mean(scores):.3f} {params}")
                raise optuna.TrialPruned()
        print(f"trial {trial.number}: {np.mean(scores):.3f} {params}", flush=True)
        return float(np.mean(scores))

    return objective


def open_study(args: Args, dims: list[Dimension], out: str):
    """The study in --storage, created or loaded. Raises SystemExit (one line) when a loaded study was made with
    another --space."""
    import optuna

    storage = args.storage or f"sqlite:///{os.path.join(out, 'study.db')}"
    if "://" not in storage:
        storage = f"sqlite:///{os.path.abspath(storage)}"
    pruner = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials),
        "hyperband": optuna.pruners.HyperbandPruner(),
        "none": optuna.pruners.NopPruner(),
    }[args.pruner]
    name = args.study_name or f"{Path(args.script).stem}__{'_'.join(bench_run.env_folder(e) for e in args.env_ids)}"
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=args.sampler_seed),
        pruner=pruner,
        load_if_exists=True,
    )
    space = json.dumps([[d.name, d.kind, list(d.values)] for d in dims])
    setting = json.dumps([args.script, list(args.env_ids), args.seeds, args.total_timesteps, args.script_args])
    saved = study.user_attrs.get("space"), study.user_attrs.get("setting")
    if saved == (None, None):
        study.set_user_attr("space", space)
        study.set_user_attr("setting", setting)
    elif saved != (space, setting):
        raise SystemExit(
            f"benchmarks.tune: error: the study {name} in {storage} was made with another --space or runs "
            f"(--script, --env-ids, --seeds, --total-timesteps, --script-args): give a new --study-name or --storage"
        )
    return study


def enqueue(study, entries: tuple[str, ...], dims: list[Dimension]) -> None:
    """--enqueue entries (NAME=VALUE,...) as trials Optuna runs first; values converted as their dimension's."""
    names = {d.name: d for d in dims}
    for entry in entries:
        params = {}
        for part in entry.split(","):
            name, _, value = part.partition("=")
            if name not in names:
                raise SystemExit(f"benchmarks.tune: error: --enqueue {entry}: {name} is not in --space")
            kind = names[name].kind
            params[name] = int(value) if kind == "int" else value if kind == "cat" else float(value)
        study.enqueue_trial(params)


def report(study, args: Args, out: str) -> str:
    """The best trial as a command line, the top 5 as a markdown table (OUT/tune.md), and Optuna's history and
    importance plots (PNG). Returns the text printed."""
    import optuna

    from benchmarks.report import pyplot

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return "no complete trial yet"
    best = max(done, key=lambda t: t.value)
    env = args.env_ids[0] if len(args.env_ids) == 1 else "ENV_ID"
    command = f"python {args.script} --env-id {env} --total-timesteps {args.total_timesteps} "
    command += shlex.join([*shlex.split(args.script_args), *flags_of(best.params)])
    names = sorted(best.params)
    lines = [f"best: trial {best.number}, score {best.value:.3f}", f"    {command.strip()}", ""]
    lines += ["| trial | score | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for t in sorted(done, key=lambda t: -t.value)[:5]:
        lines.append(
            f"| {t.number} | {t.value:.3f} | "
            + " | ".join(f"{t.params[n]:.4g}" if isinstance(t.params[n], float) else str(t.params[n]) for n in names)
            + " |"
        )
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    lines += ["", f"{len(done)} complete, {pruned} pruned, {len(study.trials) - len(done) - pruned} failed or running"]
    pyplot()  # matplotlib's file backend
    from optuna.visualization import matplotlib as plots

    plots.plot_optimization_history(study).figure.savefig(os.path.join(out, "history.png"), dpi=100)
    if len(done) >= 2 and len(names) >= 1:
        try:
            plots.plot_param_importances(study).figure.savefig(os.path.join(out, "importance.png"), dpi=100)
        except (RuntimeError, ValueError) as e:  # e.g. every trial had the same parameters
            lines.append(f"no importance plot: {e}")
    text = "\n".join(lines)
    Path(out, "tune.md").write_text(text + "\n")
    return text


def main(args: Args):
    """Run --trials more trials of the study; returns it."""
    import optuna

    if not (ROOT / args.script).is_file():
        raise SystemExit(f"benchmarks.tune: error: --script {args.script}: no such script in {ROOT}")
    for name in ("trials", "seeds", "total_timesteps", "workers"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"benchmarks.tune: error: --{name.replace('_', '-')} must be positive")
    dims = parse_space(args.space, args.script)
    out = os.path.abspath(args.out or os.path.join(ROOT, "benchmarks", "tune", Path(args.script).stem))
    os.makedirs(out, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the importance plot's
    study = open_study(args, dims, out)
    enqueue(study, args.enqueue, dims)
    stopping, running = threading.Event(), {}
    try:
        study.optimize(make_objective(args, dims, out, stopping, running), n_trials=args.trials, n_jobs=args.workers)
    except KeyboardInterrupt:
        stopping.set()
        for proc in list(running.values()):
            proc.send_signal(signal.SIGINT)
        print(f"stopped: run the same command again to add trials to the study ({out})")
        raise SystemExit(130) from None
    print(report(study, args, out))
    return study


if __name__ == "__main__":
    main(tyro.cli(Args))
