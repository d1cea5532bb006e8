"""benchmarks.run: a tiny matrix end to end, failures, skipping finished runs, the SLURM array."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tyro
from test_scripts import scalars

from benchmarks import report, run


def tiny_matrix(out, **kw):
    """2 scripts x CartPole-v1 x 2 seeds x 1024 steps: ppo_continuous refuses CartPole (a Discrete env), so
    half the runs fail, quickly and for a known reason."""
    defaults = dict(
        scripts=("ppo_discrete.py", "ppo_continuous.py"),
        env_ids=("CartPole-v1",),
        seeds=(1, 2),
        total_timesteps=1024,
        script_args="--num-steps 32 --num-minibatches 4",
        workers=2,
        out=str(out),
    )
    return run.Args(**{**defaults, **kw})


def test_matrix_runs_records_a_manifest_and_reports(workdir, monkeypatch):
    manifest = run.main(tiny_matrix(workdir / "bm"))
    assert set(manifest) == {
        f"{s}/CartPole-v1/seed{n}" for s in ("ppo_discrete.py", "ppo_continuous.py") for n in (1, 2)
    }
    on_disk = json.loads((workdir / "bm" / "manifest.json").read_text())
    assert on_disk == manifest
    for seed in (1, 2):
        done = manifest[f"ppo_discrete.py/CartPole-v1/seed{seed}"]
        assert done["status"] == "done" and done["returncode"] == 0 and done["wall_time_s"] > 0
        assert f"--seed {seed} --total-timesteps 1024 --torch-threads 1 --save-model --num-steps 32" in done["command"]
        assert os.path.isdir(done["tensorboard"]) and "finished at global_step=1024" in open(done["log"]).read()
        failed = manifest[f"ppo_continuous.py/CartPole-v1/seed{seed}"]  # reported, and the others went on
        assert failed["status"] == "failed" and failed["returncode"] != 0 and failed["tensorboard"] is None
        assert "is not a flat Box" in open(failed["log"]).read()

    report.main(report.Args((str(workdir / "bm"),), out=str(workdir / "report")))
    table = (workdir / "report" / "results.md").read_text()
    assert "| CartPole-v1 | ppo_discrete | 1,024 | 2 | **" in table  # steps, complete seeds, the best in bold
    assert sorted(p.name for p in (workdir / "report").glob("*.png")) == [
        "CartPole-v1_steps.png",
        "CartPole-v1_walltime.png",
        "aggregate.png",
    ]

    # Run again: the finished runs are skipped, the failed ones are tried again.
    ran = []
    monkeypatch.setattr(run, "run_one", lambda r, *a: (ran.append(r.key), {**manifest[r.key]})[1])
    run.main(tiny_matrix(workdir / "bm"))
    assert sorted(ran) == [f"ppo_continuous.py/CartPole-v1/seed{n}" for n in (1, 2)]
    ran.clear()  # a changed command is a different run
    run.main(tiny_matrix(workdir / "bm", total_timesteps=2048, scripts=("ppo_discrete.py",)))
    assert sorted(ran) == [f"ppo_discrete.py/CartPole-v1/seed{n}" for n in (1, 2)]


def test_slurm_array_is_well_formed_and_runs_a_task(workdir):
    args = tiny_matrix(workdir / "bm", slurm=True, scripts=("ppo_discrete.py",), track=True, wandb_entity="team")
    assert run.main(args) == {}
    sbatch = workdir / "bm" / "benchmark.sbatch"
    text = sbatch.read_text()
    assert text.startswith("#!/bin/bash\n") and "#SBATCH --array=0-1\n" in text
    assert subprocess.run(["bash", "-n", str(sbatch)]).returncode == 0
    assert "--track --wandb-project-name ppo-single-file --wandb-entity team" in text
    assert not (workdir / "bm" / "manifest.json").exists()  # nothing ran
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1"}
    args.track = False
    run.write_sbatch(run.plan(args)[0], str(workdir / "bm"))  # the same array without W&B, to run task 1 here
    proc = subprocess.run(["bash", str(sbatch)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "finished at global_step=1024" in proc.stdout
    assert os.listdir(workdir / "bm" / "ppo_discrete" / "CartPole-v1" / "seed2" / "runs")
    assert not (workdir / "bm" / "ppo_discrete" / "CartPole-v1" / "seed1").exists()
    assert "#SBATCH --requeue\n" in text and "#SBATCH --signal=B:TERM@120\n" in text
    # A requeued or resubmitted task resumes from the checkpoint the run left (every run saves one).
    again = subprocess.run(["bash", str(sbatch)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("resuming from runs/CartPole-v1__ppo_discrete__2__")
    assert "checkpoint.pt" in again.stdout.splitlines()[0]


def test_bad_input_is_refused_before_anything_runs(workdir):
    with pytest.raises(SystemExit, match="--scripts no_such.py: no such script"):
        run.main(tiny_matrix(workdir / "bm", scripts=("no_such.py",)))
    with pytest.raises(SystemExit, match="--workers must be positive"):
        run.main(tiny_matrix(workdir / "bm", workers=0))
    assert not (workdir / "bm").exists()


def test_presets_skip_scripts_not_yet_in_the_repository():
    scripts, env_ids, budget = run.PRESETS["mujoco"]
    present = {s for s in scripts if (run.ROOT / s).is_file()}
    runs, missing, _ = run.plan(run.Args(preset="mujoco", seeds=(1, 2)))
    assert "ppo_continuous.py" in present
    assert {r.script for r in runs} == present and len(runs) == len(present) * len(env_ids) * 2
    assert set(missing) == set(scripts) - present
    assert all(r.command[r.command.index("--total-timesteps") + 1] == str(budget) for r in runs)


def test_ctrl_c_stops_the_matrix_and_the_rerun_resumes(workdir):
    """Ctrl-C during seed 1 of 2 (one worker): seed 1 saves its checkpoint and stops, seed 2 never starts, the
    manifest says so, exit 130. The same command again resumes seed 1 in its own folder and runs seed 2."""
    out = workdir / "bm"
    argv = ["--scripts", "ppo_discrete.py", "--env-ids", "CartPole-v1", "--seeds", "1", "2", "--workers", "1"]
    argv += ["--total-timesteps", "30000", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", *argv],
        cwd=run.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = out / "ppo_discrete" / "CartPole-v1" / "seed1" / "run.log"
    deadline = time.time() + 120
    while not (log.exists() and "global_step=" in log.read_text()) and time.time() < deadline:
        time.sleep(0.05)  # until seed 1 trains (its handlers are installed)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout
    assert "Traceback" not in stdout and "0 runs done, 0 failed, 1 interrupted, 1 not started" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest) == ["ppo_discrete.py/CartPole-v1/seed1"]
    assert manifest["ppo_discrete.py/CartPole-v1/seed1"]["status"] == "interrupted"
    assert "resume with --resume runs/" in log.read_text()

    resumed = run.main(tyro.cli(run.Args, args=argv))
    first, second = resumed["ppo_discrete.py/CartPole-v1/seed1"], resumed["ppo_discrete.py/CartPole-v1/seed2"]
    assert first["status"] == second["status"] == "done"
    assert first["resumed_from"].startswith("runs/") and second["resumed_from"] is None
    assert first["command"] == second["command"].replace("--seed 2", "--seed 1")  # the same run, resumed
    assert len(os.listdir(out / "ppo_discrete" / "CartPole-v1" / "seed1" / "runs")) == 1
    assert "finished at global_step=29696" in log.read_text()
    steps = [e.step for e in scalars(first["tensorboard"]).Scalars("charts/SPS")]
    assert steps == list(range(512, 29697, 512))  # every iteration once, in one TensorBoard folder


def test_atari_preset_runs_and_reports(workdir):
    """The atari preset end to end on one game and seed at a tiny budget: ppo_atari and ppo_lstm run, and the report
    reads both runs and puts CleanRL's published Breakout figures beside them (ppo_atari_envpool.py, ppo_atari_lstm.py)."""
    args = run.Args(preset="atari", env_ids=("Breakout-v5",), seeds=(1,), total_timesteps=1024, out=str(workdir / "a"))
    args.script_args = "--num-envs 2 --num-steps 64 --num-minibatches 2 --update-epochs 1"
    manifest = run.main(args)
    assert [m["status"] for m in manifest.values()] == ["done", "done"]
    report.main(report.Args((str(workdir / "a"),), out=str(workdir / "report")))
    table = (workdir / "report" / "results.md").read_text()
    assert "| Breakout-v5 | ppo_atari | 1,024 | 1 |" in table and "211.24" in table
    assert "| Breakout-v5 | ppo_lstm | 1,024 | 1 |" in table and "113.42" in table
