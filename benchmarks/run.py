"""Run a matrix of scripts x env ids x seeds, locally in parallel or as a SLURM array.

    python -m benchmarks.run --preset classic                     # published budgets, seeds 1-3
    python -m benchmarks.run --preset mujoco --seeds 1 2 --workers 2
    python -m benchmarks.run --preset classic --total-timesteps 50000 --out /tmp/quick
    python -m benchmarks.run --preset mujoco --slurm              # writes OUT/benchmark.sbatch instead
    python -m benchmarks.report benchmarks/runs/classic           # tables and curves afterwards

Every run gets its own directory OUT/{script}/{env_id}/seed{S}/ (the script's TensorBoard logs land in its
runs/, its stdout and stderr in run.log). OUT/manifest.json records each run's command, exit status, wall
time, log and TensorBoard directory; it is rewritten after every run, so an interrupted matrix can be run
again and skips the runs that finished (same command, exit status 0). A failing run is reported and the
others continue. Scripts of a preset that are not in this repository yet are skipped with a notice.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

# The published comparisons (REFERENCE.md): scripts, env ids and the budget (env steps) every script gets.
PRESETS = {
    "classic": (
        ("ppo_discrete.py", "trpo_baseline.py", "a2c_baseline.py"),
        ("CartPole-v1", "Acrobot-v1", "MountainCar-v0"),
        500_000,
    ),
    "mujoco": (
        ("ppo_continuous.py", "trpo_baseline.py", "a2c_baseline.py"),
        ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"),
        1_000_000,
    ),
    "atari": (("ppo_atari.py", "ppo_lstm.py"), ("Pong-v5", "Breakout-v5", "BeamRider-v5"), 10_000_000),
}


@dataclass
class Args:
    preset: Literal["classic", "mujoco", "atari"] = "classic"
    """named matrix with the published budgets: classic (CartPole, Acrobot, MountainCar), mujoco (HalfCheetah,
    Hopper, Walker2d), atari (Pong, Breakout, BeamRider)"""
    scripts: tuple[str, ...] | None = None
    """override the preset's scripts (file names in the repository root)"""
    env_ids: tuple[str, ...] | None = None
    """override the preset's env ids"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds, one run each"""
    total_timesteps: int | None = None
    """override the preset's budget (env steps per run: classic 500k, mujoco 1M, atari 10M)"""
    script_args: str = ""
    """extra flags for every run, as one string, e.g. --script-args='--env-backend envpool'"""
    workers: int = len(os.sched_getaffinity(0))
    """parallel runs (default: the number of cores); each run gets one torch thread"""
    out: str | None = None
    """output directory (default: benchmarks/runs/{preset})"""
    track: bool = False
    """track every run with Weights & Biases, grouped by script and env"""
    wandb_project_name: str = "ppo-single-file"
    """the W&B project (with --track)"""
    wandb_entity: str | None = None
    """the W&B entity (with --track)"""
    slurm: bool = False
    """write OUT/benchmark.sbatch (a SLURM array, one task per run) instead of running"""


@dataclass
class Run:
    script: str
    env_id: str
    seed: int
    command: list[str]
    cwd: str

    @property
    def key(self) -> str:
        return f"{self.script}/{self.env_id}/seed{self.seed}"


def plan(args: Args) -> tuple[list[Run], list[str], str]:
    """The runs of the matrix, the preset scripts skipped because they are not in the repository, and OUT.

    Raises:
        SystemExit: a script named with --scripts that does not exist, or bad sizes, before anything runs.
    """
    preset_scripts, preset_envs, budget = PRESETS[args.preset]
    scripts, env_ids = args.scripts or preset_scripts, args.env_ids or preset_envs
    missing = [s for s in scripts if not (ROOT / s).is_file()]
    if args.scripts and missing:
        raise SystemExit(f"benchmarks.run: error: --scripts {' '.join(missing)}: no such script in {ROOT}")
    if args.workers <= 0:
        raise SystemExit(f"benchmarks.run: error: --workers must be positive, got {args.workers}")
    if args.total_timesteps is not None and args.total_timesteps <= 0:
        raise SystemExit(f"benchmarks.run: error: --total-timesteps must be positive, got {args.total_timesteps}")
    out = os.path.abspath(args.out or os.path.join(ROOT, "benchmarks", "runs", args.preset))
    runs = []
    for script in (s for s in scripts if s not in missing):
        for env_id in env_ids:
            for seed in args.seeds:
                command = [sys.executable, str(ROOT / script), "--env-id", env_id, "--seed", str(seed)]
                command += ["--total-timesteps", str(args.total_timesteps or budget)]
                command += ["--torch-threads", "1", *shlex.split(args.script_args)]
                if args.track:
                    command += ["--track", "--wandb-project-name", args.wandb_project_name]
                    command += ["--wandb-entity", args.wandb_entity] if args.wandb_entity else []
                cwd = os.path.join(out, Path(script).stem, env_id, f"seed{seed}")
                runs.append(Run(script, env_id, seed, command, cwd))
    return runs, missing, out


def run_one(run: Run) -> dict:
    """Run one script to completion in its directory; return its manifest entry."""
    os.makedirs(run.cwd, exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # one core per run: workers must not oversubscribe the machine
        "MKL_NUM_THREADS": "1",
        "WANDB_RUN_GROUP": f"{Path(run.script).stem}__{run.env_id}",  # W&B groups the seeds of a curve
    }
    log = os.path.join(run.cwd, "run.log")
    start = time.time()
    with open(log, "w") as f:
        returncode = subprocess.run(run.command, cwd=run.cwd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    tb_dirs = sorted(str(p) for p in Path(run.cwd, "runs").glob("*") if p.is_dir())
    return {
        "script": run.script,
        "env_id": run.env_id,
        "seed": run.seed,
        "command": shlex.join(run.command),
        "returncode": returncode,
        "status": "done" if returncode == 0 else "failed",
        "wall_time_s": round(time.time() - start, 1),
        "log": log,
        "tensorboard": tb_dirs[-1] if tb_dirs else None,
    }


def load_manifest(out: str) -> dict:
    path = os.path.join(out, "manifest.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def save_manifest(out: str, manifest: dict) -> None:
    """Rewrite OUT/manifest.json atomically (a crash leaves the previous one)."""
    path = os.path.join(out, "manifest.json")
    with open(f"{path}.tmp", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(f"{path}.tmp", path)


def write_sbatch(runs: list[Run], out: str) -> str:
    """OUT/benchmark.sbatch: a SLURM array with one single-core task per run, each in its run directory."""
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=ppo-benchmark",
        f"#SBATCH --array=0-{len(runs) - 1}",
        "#SBATCH --cpus-per-task=1",
        f"#SBATCH --output={out}/slurm-%A_%a.out",
        "set -euo pipefail",
        "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1",
        "RUNS=(",
        *(
            f"  {shlex.quote(f'mkdir -p {shlex.quote(r.cwd)} && cd {shlex.quote(r.cwd)} && {shlex.join(r.command)}')}"
            for r in runs
        ),
        ")",
        'eval "${RUNS[$SLURM_ARRAY_TASK_ID]}"',
    ]
    path = os.path.join(out, "benchmark.sbatch")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(args: Args) -> dict:
    """Run (or, with --slurm, write) the matrix. Returns the manifest {run key: entry}."""
    runs, missing, out = plan(args)
    for script in missing:
        print(f"skipped {script}: not in this repository yet")
    if not runs:
        raise SystemExit("benchmarks.run: error: nothing to run")
    os.makedirs(out, exist_ok=True)
    if args.slurm:
        path = write_sbatch(runs, out)
        print(f"wrote {path} ({len(runs)} array tasks): sbatch {path}")
        return {}

    manifest = load_manifest(out)
    todo = [
        r
        for r in runs
        if manifest.get(r.key, {}).get("status") != "done" or manifest[r.key]["command"] != shlex.join(r.command)
    ]
    if len(todo) < len(runs):
        print(f"skipping {len(runs) - len(todo)} finished runs (manifest: {out}/manifest.json)")
    failed = []
    bar = tqdm(total=len(todo), unit="run", dynamic_ncols=True, disable=not todo or not sys.stderr.isatty())
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(run_one, r): r for r in todo}
        for future in as_completed(futures):
            run, entry = futures[future], future.result()
            manifest[run.key] = entry  # only this thread writes the manifest
            save_manifest(out, manifest)
            if entry["status"] == "failed":
                failed.append(run.key)
                tqdm.write(f"FAILED {run.key} (exit {entry['returncode']}): see {entry['log']}")
            else:
                tqdm.write(f"done {run.key} in {entry['wall_time_s']:.0f} s")
            bar.update(1)
            bar.set_postfix(failed=len(failed))
    bar.close()
    print(f"{len(todo) - len(failed)} runs done, {len(failed)} failed; manifest: {out}/manifest.json")
    print(f"report: python -m benchmarks.report {out}")
    return manifest


if __name__ == "__main__":
    sys.exit(1 if any(e["status"] == "failed" for e in main(tyro.cli(Args)).values()) else 0)
