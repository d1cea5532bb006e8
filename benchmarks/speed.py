"""Speed benchmark: agent steps per second (SPS) of an algorithm script at its defaults, and where the time goes.

    python -m benchmarks.speed                                   # ppo_discrete.py, 3 runs of 100k steps
    python -m benchmarks.speed --total-timesteps 500000 --runs 1
    python -m benchmarks.speed --reference ~/cleanrl/ppo.py      # the reference, interleaved run by run
    python -m benchmarks.speed --script ppo_continuous.py --runs 3
    python -m benchmarks.speed --script ppo_atari.py --total-timesteps 20480 --reference ~/cleanrl/ppo_atari_envpool.py
    python -m benchmarks.speed --script trpo_baseline.py          # no CleanRL counterpart: SPS only
    python -m benchmarks.speed --compile --reference ~/cleanrl/ppo.py --reference-python ~/cleanrl-venv/bin/python
    python -m benchmarks.speed --compile --total-timesteps 500000 --to-return 475 --no-profile  # seconds to 475

Each run is a fresh process; SPS is the script's own last reported figure (steps / seconds since the loop
started, as CleanRL computes it). Runs alternate between the scripts so that a machine's noisy moments hit
both alike. Without --reference the comparison is with --reference-sps (the script's CleanRL counterpart
measured on this project's 2-vCPU machines, benchmarks/reference.py); scripts without a counterpart (the
baselines) get their SPS alone. The profile runs once in-process and splits wall time
into env stepping, the update phase and the rest (acting, storage, GAE, logging, setup).

With --compile each run measures the script three ways, eager, `--compile` with a cold compile cache (a new empty
TORCHINDUCTOR_CACHE_DIR) and `--compile` again with that cache warm, and reports two figures for each: steady-state
SPS (steps per second after 3 burn-in iterations, from the wall times of the run's TensorBoard `charts/SPS`
events, as LeanRL measures) and SPS including compile time (the script's own figure: steps over the whole loop).
--to-return R adds the wall-clock seconds from each process's start until its last --window training episodes
first average R or more, compile time and start-up included.
"""

import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.reference import SPS as REFERENCE_SPS

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    script: str = "ppo_discrete.py"
    """the script to measure, relative to the repository root"""
    total_timesteps: int = 100_000
    """steps per run (the scripts' other flags stay at their defaults)"""
    runs: int = 3
    """runs per script; the median is reported"""
    reference: str | None = None
    """path of a reference script to run interleaved (it must print `SPS: N` or `SPS=N`)"""
    reference_sps: float | None = None
    """the reference's SPS when --reference is not given (default: benchmarks/reference.py's figure for the script's
    CleanRL counterpart at its defaults: 5,100 for ppo_discrete.py, 1,230 for ppo_continuous.py; none for the
    baselines)"""
    profile: bool = True
    """also split one run's wall time into env, update and the rest"""
    script_args: str = ""
    """extra flags for the measured script, as one string, e.g. --script-args='--env-backend envpool'"""
    reference_python: str = sys.executable
    """the Python that runs --reference (CleanRL's scripts need gymnasium 0.29: their own virtual environment)"""
    compile: bool = False
    """measure the script eager, with --compile and a cold cache, and with --compile and a warm cache"""
    to_return: float | None = None
    """with --compile: also the seconds from each process's start until the mean of the last --window training
    episodes first reaches this return (compile time included), e.g. 475 for CartPole-v1"""
    window: int = 20
    """episodes averaged for --to-return"""


def steady_sps(run_dir: str, burn_in: int = 3) -> float | None:
    """Steps per second after `burn_in` iterations, from the wall times of the `charts/SPS` events that a script
    (ours or CleanRL's) writes once per iteration to its TensorBoard folder; None with too few iterations."""
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    if "charts/SPS" not in acc.Tags()["scalars"]:
        return None
    events = acc.Scalars("charts/SPS")
    if len(events) < burn_in + 2:
        return None
    first, last = events[burn_in], events[-1]
    return (last.step - first.step) / (last.wall_time - first.wall_time)


def seconds_to_return(run_dir: str, start: float, threshold: float, window: int) -> float | None:
    """Seconds from `start` (a time.time() stamp) to the first `charts/episodic_return` event of a script's
    TensorBoard folder at which the mean of the last `window` episodes reached `threshold`; None if it never did."""
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    if "charts/episodic_return" not in acc.Tags()["scalars"]:
        return None
    events = sorted(acc.Scalars("charts/episodic_return"), key=lambda e: e.wall_time)
    for i in range(window, len(events) + 1):
        if statistics.fmean(e.value for e in events[i - window : i]) >= threshold:
            return events[i - 1].wall_time - start
    return None


def measure(command: list[str], env: dict | None = None, to_return: tuple[float, int] | None = None) -> dict:
    """Run `command` in a scratch directory. Returns its last printed SPS figure (`sps`: steps over the whole
    training loop, compile time included), `steady` (steady_sps of its TensorBoard folder), `wall` (seconds
    the process took, start-up included) and, given `to_return` (threshold, window), `reached`
    (seconds_to_return from the process's start).

    Raises:
        RuntimeError: the command failed or printed no SPS.
    """
    with tempfile.TemporaryDirectory() as tmp:
        start, started = time.perf_counter(), time.time()
        proc = subprocess.run(
            command, cwd=tmp, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline", **(env or {})}
        )
        wall = time.perf_counter() - start
        found = re.findall(r"SPS[=:]\s*(\d+)", proc.stdout)
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        runs = [str(p.parent) for p in Path(tmp, "runs").rglob("events.out.tfevents.*")]
        steady = steady_sps(runs[0]) if runs else None
        reached = seconds_to_return(runs[0], started, *to_return) if runs and to_return else None
    return {"sps": int(found[-1]), "steady": steady, "wall": wall, "reached": reached}


def measure_sps(command: list[str]) -> int:
    """Run `command` in a scratch directory; return the last SPS figure it printed (measure's `sps`)."""
    return measure(command)["sps"]


def compare_compile(args: Args, ours_cmd: list[str], ref_cmd: list[str] | None) -> None:
    """Eager, --compile with a cold cache and --compile with a warm cache (and the reference), `args.runs` rounds
    interleaved; prints a Markdown table of medians: steady-state SPS, SPS with compile time, process seconds
    (and with --to-return the seconds to that return, "-" where a run never reached it)."""
    to_return = (args.to_return, args.window) if args.to_return is not None else None
    rows = {"eager": [], "--compile, cold cache": [], "--compile, warm cache": []}
    if ref_cmd:
        rows["reference"] = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:  # each round compiles from an empty cache, then reuses it
            env = {"TORCHINDUCTOR_CACHE_DIR": cache}
            rows["eager"].append(measure([*ours_cmd, "--no-compile"], env, to_return))
            if rows["eager"][-1]["steady"] is None:
                raise SystemExit(
                    f"benchmarks.speed: error: --total-timesteps {args.total_timesteps}: fewer than 5 iterations of "
                    f"{args.script}, too few for a steady-state SPS after 3 burn-in iterations"
                )
            rows["--compile, cold cache"].append(measure([*ours_cmd, "--compile"], env, to_return))
            rows["--compile, warm cache"].append(measure([*ours_cmd, "--compile"], env, to_return))
        if ref_cmd:
            rows["reference"].append(measure(ref_cmd, None, to_return))
        print(f"round {i + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]['steady'] or 0:.0f}" for k, v in rows.items()))
    ref = statistics.median(r["steady"] for r in rows["reference"]) if ref_cmd else None
    print(f"\n{args.script}, {args.total_timesteps} steps, median of {args.runs} round(s)\n")
    reached_head = f" seconds to return {args.to_return:g} (last {args.window} episodes) |" if to_return else ""
    print(
        "| run | steady-state SPS | SPS incl. compile | seconds (process) |"
        + (" steady vs reference |" if ref else "")
        + reached_head
    )
    print("|---|---|---|---|" + ("---|" if ref else "") + ("---|" if to_return else ""))
    for name, results in rows.items():
        steady = statistics.median(r["steady"] for r in results)
        sps, wall = statistics.median(r["sps"] for r in results), statistics.median(r["wall"] for r in results)
        line = f"| {name} | {steady:,.0f} | {sps:,.0f} | {wall:.1f} |" + (f" {steady / ref:.2f}x |" if ref else "")
        if to_return:
            reached = [r["reached"] for r in results]
            line += f" {statistics.median(reached):.1f} |" if None not in reached else " - |"
        print(line)


def profile(script: str, total_timesteps: int, script_args: list[str]) -> dict[str, float]:
    """Seconds spent in env.step, in the update phase, in normalisation (scripts that normalise), and in all,
    for one in-process run of `script`."""
    sys.path.insert(0, str(ROOT))
    module = __import__(Path(script).stem)
    spent = {"env": 0.0, "update": 0.0, "normalisation": 0.0}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - start

        return wrapper

    make_envs = module.make_envs
    update_name = next(n for n in ("ppo_update", "trpo_update", "a2c_update") if hasattr(module, n))

    def make_timed_envs(*a, **k):
        made = make_envs(*a, **k)
        envs = made[0] if isinstance(made, tuple) else made  # ppo_atari's make_envs also returns the first frames
        envs.step = timed("env", envs.step)
        return made

    module.make_envs = make_timed_envs
    setattr(module, update_name, timed("update", getattr(module, update_name)))
    if hasattr(module, "scale_rewards"):  # observation normalisation and reward scaling (Box action spaces)
        module.scale_rewards = timed("normalisation", module.scale_rewards)
        module.Agent.normalize_obs = timed("normalisation", module.Agent.normalize_obs)
    args = module.parse_args(["--total-timesteps", str(total_timesteps), *script_args])
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        start = time.perf_counter()
        try:
            module.main(args)
        finally:
            os.chdir(cwd)
        spent["total"] = time.perf_counter() - start
    return spent


def main(args: Args) -> None:
    published = REFERENCE_SPS.get(Path(args.script).name)
    reference_sps = args.reference_sps or (published[0] if published else None)
    if not (ROOT / args.script).is_file():
        raise SystemExit(f"benchmarks.speed: error: --script {args.script}: no such file in {ROOT}")
    ours_cmd = [
        sys.executable,
        str(ROOT / args.script),
        "--total-timesteps",
        str(args.total_timesteps),
        *shlex.split(args.script_args),
    ]
    ref_cmd = (
        [args.reference_python, str(Path(args.reference).resolve()), "--total-timesteps", str(args.total_timesteps)]
        if args.reference
        else None
    )
    if args.compile:
        return compare_compile(args, ours_cmd, ref_cmd)
    ours, ref = [], []
    for i in range(args.runs):
        ours.append(measure_sps(ours_cmd))
        line = f"run {i + 1}/{args.runs}: {args.script} {ours[-1]} SPS"
        if ref_cmd:
            ref.append(measure_sps(ref_cmd))
            line += f", reference {ref[-1]} SPS"
        print(line, flush=True)
    median = statistics.median(ours)
    ref_median = statistics.median(ref) if ref else reference_sps
    ref_name = (
        f"reference (measured, median of {len(ref)})"
        if ref
        else f"reference ({published[1] if published and not args.reference_sps else '--reference-sps'})"
    )
    print(
        f"\n{args.script}: median {median:.0f} SPS (min {min(ours)}, max {max(ours)}) over {args.runs} runs of {args.total_timesteps} steps"
    )
    if ref_median is not None:
        print(f"{ref_name}: {ref_median:.0f} SPS  ->  ratio {median / ref_median:.2f}x")
    if args.profile:
        spent = profile(args.script, args.total_timesteps, shlex.split(args.script_args))
        rest = spent["total"] - spent["env"] - spent["update"] - spent["normalisation"]
        print(f"\nwhere the time goes ({spent['total']:.1f} s, one in-process run):")
        rows = [("env.step", spent["env"]), ("update phase", spent["update"])]
        if spent["normalisation"]:
            rows.append(("observation and reward normalisation", spent["normalisation"]))
        for name, seconds in (*rows, ("acting, storage, GAE, logging, setup", rest)):
            print(f"  {name:38s} {seconds:6.1f} s  {100 * seconds / spent['total']:5.1f}%")


if __name__ == "__main__":
    main(tyro.cli(Args))
