"""Run a matrix of scripts x env ids x seeds, locally in parallel or as a SLURM array.

    python -m benchmarks.run --preset classic                     # published budgets, seeds 1-3
    python -m benchmarks.run --preset mujoco --seeds 1 2 --workers 2
    python -m benchmarks.run --preset classic --total-timesteps 50000 --out /tmp/quick
    python -m benchmarks.run --preset mujoco --slurm              # writes OUT/benchmark.sbatch instead
    python -m benchmarks.report benchmarks/runs/classic           # tables and curves afterwards

Every run gets its own directory OUT/{script}/{env}/seed{S}/ ({env}: the env id without a `module:` prefix) (the script's TensorBoard logs and checkpoint
land in its runs/, its stdout and stderr in run.log). Every run saves a checkpoint (--save-model), so a stopped
run can continue. OUT/manifest.json records each run's command, status, exit status, wall time, log and
TensorBoard directory; it is rewritten after every run. A failing run is reported and the others continue.

Ctrl-C (or SIGTERM) stops the matrix: no new run starts, the runs in flight are passed the signal once (each
finishes its iteration, saves its checkpoint and stops), the manifest is written, and the exit status is 130. A
second Ctrl-C stops the runs in flight at once. Running the same matrix again skips the finished runs (same
command, status done), resumes every other run from its checkpoint (--resume), and starts afresh, in a clean
folder, one that has none. Scripts of a preset that are not in this repository yet are skipped with a notice.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

# The published comparisons (benchmarks/reference.py): scripts, env ids and the budget (env steps) every script gets.
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
    # A partially observed task: CartPole without its velocities, which ppo_lstm.py registers (gymnasium's
    # "module:EnvId" form makes ppo_discrete.py import it).
    "pomdp": (("ppo_lstm.py", "ppo_discrete.py"), ("ppo_lstm:CartPoleNoVel-v1",), 500_000),
}
# Flags every run of a preset gets: MuJoCo runs end with 10 evaluation episodes, so that the results have the
# deterministic-action metric that RL Zoo's and sb3-contrib's figures use (benchmarks/reference.py).
PRESET_ARGS = {
    "mujoco": "--eval-episodes 10",
    # Both scripts at the same settings, close to RL Zoo's recurrent PPO entry for CartPoleNoVel-v1 (8 envs x 32
    # steps, gamma 0.98, GAE lambda 0.8, no entropy bonus), with lr 5e-4 and value coefficient 0.25 (the LSTM is
    # shared by both heads); ppo.py's classic-control defaults learn it too slowly for the 500k budget (README).
    "pomdp": "--num-envs 8 --num-steps 32 --num-minibatches 2 --update-epochs 10 --learning-rate 5e-4 "
    "--vf-coef 0.25 --gamma 0.98 --gae-lambda 0.8 --ent-coef 0",
}
# Per (script, env) flags of the published anchor a preset compares with; the scripts' own defaults stay the
# library's. sb3-contrib's TRPO figures come from RL Zoo's hyperparams/trpo.yml MuJoCo entries: 2 envs x 1024
# steps, critic minibatches of 128 (16 per batch) for 20 epochs at Adam 1e-3, 25 CG iterations, damping 0.1,
# VecNormalize (whose reward scaling restarts at every episode end), target KL 0.04 on HalfCheetah (0.01 elsewhere).
# RL Zoo has no A2C entry for MuJoCo: a2c_baseline.py runs at its defaults.
_ZOO_TRPO = (
    "--num-envs 2 --num-steps 1024 --num-minibatches 16 --update-epochs 20 --learning-rate 1e-3 "
    "--cg-iters 25 --cg-damping 0.1 --norm-reward-reset episode-end"
)
ANCHOR_ARGS = {
    ("trpo_baseline.py", "HalfCheetah-v5"): _ZOO_TRPO + " --max-kl 0.04",
    ("trpo_baseline.py", "Hopper-v5"): _ZOO_TRPO,
    ("trpo_baseline.py", "Walker2d-v5"): _ZOO_TRPO,
}


@dataclass
class Args:
    preset: Literal["classic", "mujoco", "atari", "pomdp"] = "classic"
    """named matrix with the published budgets: classic (CartPole, Acrobot, MountainCar), mujoco (HalfCheetah,
    Hopper, Walker2d), atari (Pong, Breakout, BeamRider), pomdp (CartPoleNoVel: ppo_lstm against ppo_discrete)"""
    scripts: tuple[str, ...] | None = None
    """override the preset's scripts (file names in the repository root)"""
    env_ids: tuple[str, ...] | None = None
    """override the preset's env ids"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds, one run each"""
    total_timesteps: int | None = None
    """override the preset's budget (env steps per run: classic 500k, mujoco 1M, atari 10M, pomdp 500k)"""
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


def env_folder(env_id: str) -> str:
    """A folder name for an env id: gymnasium's `module:EnvId` form by its EnvId alone (a ":" in a path breaks scp and
    TensorBoard's `--logdir name:path`), a namespace's "/" as "_"."""
    return env_id.split(":")[-1].replace("/", "_")


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
                command += ["--torch-threads", "1", "--save-model", *shlex.split(PRESET_ARGS.get(args.preset, ""))]
                command += [*shlex.split(ANCHOR_ARGS.get((script, env_id), "")), *shlex.split(args.script_args)]
                if args.track:
                    command += ["--track", "--wandb-project-name", args.wandb_project_name]
                    command += ["--wandb-entity", args.wandb_entity] if args.wandb_entity else []
                cwd = os.path.join(out, Path(script).stem, env_folder(env_id), f"seed{seed}")
                runs.append(Run(script, env_id, seed, command, cwd))
    return runs, missing, out


# The line a script prints when a signal stopped it after saving its checkpoint.
STOPPED = "resume with --resume "


def latest_checkpoint(cwd: str) -> str | None:
    """The newest checkpoint.pt a run left in its folder (under its runs/), relative to the folder, or None."""
    paths = sorted(Path(cwd, "runs").rglob("checkpoint.pt"), key=lambda p: p.stat().st_mtime)
    return str(paths[-1].relative_to(cwd)) if paths else None


def run_one(run: Run, stopping: threading.Event, running: dict) -> dict | None:
    """Run one script in its directory until it ends; return its manifest entry (None if the matrix was stopped
    before the run started).

    A checkpoint left by an earlier attempt is resumed (`--resume`); without one the run starts afresh, the earlier
    attempt's partial logs removed, so each run has one TensorBoard folder. The process gets a session of its own:
    a Ctrl-C in the terminal reaches only benchmarks.run, which passes it on once (see `main`). Status: done (exit
    0 and not stopped early), interrupted (stopped by a signal; resumable) or failed.
    """
    if stopping.is_set():
        return None
    os.makedirs(run.cwd, exist_ok=True)
    ckpt = latest_checkpoint(run.cwd)
    if ckpt is None:
        shutil.rmtree(os.path.join(run.cwd, "runs"), ignore_errors=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # one core per run: workers must not oversubscribe the machine
        "MKL_NUM_THREADS": "1",
        "WANDB_RUN_GROUP": f"{Path(run.script).stem}__{run.env_id}",  # W&B groups the seeds of a curve
    }
    log = os.path.join(run.cwd, "run.log")
    start = time.time()
    with open(log, "a" if ckpt else "w") as f:
        offset = f.tell()
        command = run.command + (["--resume", ckpt] if ckpt else [])
        proc = subprocess.Popen(
            command, cwd=run.cwd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        running[run.key] = proc
        if stopping.is_set():  # stopped while it was starting
            proc.send_signal(signal.SIGINT)
        returncode = proc.wait()
        del running[run.key]
    with open(log) as f:
        f.seek(offset)
        stopped = STOPPED in f.read()
    if returncode == 0 and not stopped:
        status = "done"
    elif stopped or stopping.is_set():
        status = "interrupted"
    else:
        status = "failed"
    tb_dirs = sorted(str(p.parent) for p in Path(run.cwd, "runs").rglob("events.out.tfevents.*"))
    return {
        "script": run.script,
        "env_id": run.env_id,
        "seed": run.seed,
        "command": shlex.join(run.command),
        "resumed_from": ckpt,
        "returncode": returncode,
        "status": status,
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
    """OUT/benchmark.sbatch: a SLURM array with one single-core task per run, each in its run directory.

    Preemption: SLURM's SIGTERM (and, with --signal, one 120 s before the time limit) makes the script save its
    checkpoint and stop; a task that finds a checkpoint in its folder resumes from it, so a requeued task
    (--requeue) or a resubmitted array continues where each run stopped."""
    latest = "ckpt=$(find runs -name checkpoint.pt -printf '%T@ %p\\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2- || true)"
    tasks = []
    for r in runs:
        command = shlex.join(r.command)
        task = (
            f"mkdir -p {shlex.quote(r.cwd)} && cd {shlex.quote(r.cwd)} && {latest}; "
            f'if [ -n "$ckpt" ]; then echo "resuming from $ckpt"; exec {command} --resume "$ckpt"; else exec {command}; fi'
        )
        tasks.append(f"  {shlex.quote(task)}")
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=ppo-benchmark",
        f"#SBATCH --array=0-{len(runs) - 1}",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:TERM@120",
        f"#SBATCH --output={out}/slurm-%A_%a.out",
        "set -euo pipefail",
        "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1",
        "RUNS=(",
        *tasks,
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

    # Ctrl-C / SIGTERM: start no new run and pass the signal to the runs in flight (they checkpoint and stop).
    stopping, running, previous = threading.Event(), {}, {}

    def stop(signum, frame):
        again = stopping.is_set()
        stopping.set()
        tqdm.write(
            f"{signal.Signals(signum).name}: "
            + (
                "stopping the runs in flight at once"
                if again
                else "no new runs; the runs in flight save a checkpoint and stop (again: stop them at once)"
            )
        )
        for proc in list(running.values()):
            proc.send_signal(signum)

    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    counts = {"done": 0, "failed": 0, "interrupted": 0}
    bar = tqdm(total=len(todo), unit="run", dynamic_ncols=True, disable=not todo or not sys.stderr.isatty())
    try:
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            futures = {pool.submit(run_one, r, stopping, running): r for r in todo}
            for future in as_completed(futures):
                run, entry = futures[future], future.result()
                if entry is None:  # not started: the matrix was stopped
                    continue
                manifest[run.key] = entry  # only this thread writes the manifest
                save_manifest(out, manifest)
                counts[entry["status"]] += 1
                if entry["status"] == "failed":
                    tqdm.write(f"FAILED {run.key} (exit {entry['returncode']}): see {entry['log']}")
                elif entry["status"] == "interrupted":
                    tqdm.write(f"interrupted {run.key} after {entry['wall_time_s']:.0f} s")
                else:
                    tqdm.write(f"done {run.key} in {entry['wall_time_s']:.0f} s")
                bar.update(1)
                bar.set_postfix(failed=counts["failed"])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        bar.close()
    not_started = len(todo) - sum(counts.values())
    print(
        f"{counts['done']} runs done, {counts['failed']} failed, {counts['interrupted']} interrupted, "
        f"{not_started} not started; manifest: {out}/manifest.json"
    )
    if stopping.is_set():
        print("stopped: run the same command again to resume the interrupted runs and start the others")
        raise SystemExit(130)
    print(f"report: python -m benchmarks.report {out}")
    return manifest


if __name__ == "__main__":
    sys.exit(1 if any(e["status"] == "failed" for e in main(tyro.cli(Args)).values()) else 0)
