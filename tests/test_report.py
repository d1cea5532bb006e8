"""benchmarks.report and benchmarks.speed on synthetic TensorBoard logs written the way the scripts write them;
benchmarks.update_profile's minibatch."""

import importlib
import json

import numpy as np
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from benchmarks import report


def write_run(name, returns, steps):
    with SummaryWriter(f"runs/{name}") as writer:
        for step, value in zip(steps, returns):
            writer.add_scalar("charts/episodic_return", value, step)
        writer.add_scalar("charts/SPS", 1000, steps[-1])


def test_report_tables_and_curves_from_event_files(workdir):
    steps = np.arange(1, 301) * 10
    write_run("Hopper-v5__ppo_continuous__1__100", np.arange(300.0), steps)  # last 100: 200..299, mean 249.5
    write_run("Hopper-v5__ppo_continuous__2__101", np.full(300, 100.0), steps)
    write_run("Hopper-v5__ppo_continuous__2__50", np.full(300, -5.0), steps)  # an older run of seed 2: ignored
    write_run("not-a-run-name", np.ones(3), [1, 2, 3])
    runs = report.load_runs("runs")
    assert [(r.env_id, r.exp_name, r.seed) for r in runs] == [("Hopper-v5", "ppo_continuous", s) for s in (1, 2)]
    assert report.final_return(runs[0]) == 249.5 and report.final_return(runs[1]) == 100.0

    report.main(report.Args(("runs",), out="out"))
    table = (workdir / "out" / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| Hopper-v5"))
    assert "**174.75 ± 105.71**" in row and "1: 249.50, 2: 100.00" in row and "1,000" in row  # std with ddof=1
    assert "| 2382.86 ± 271.74 std (CleanRL" in row  # the published training-metric figure, beside ours
    assert {p.name for p in (workdir / "out").glob("*.png")} == {
        "Hopper-v5_steps.png",
        "Hopper-v5_walltime.png",
        "aggregate.png",
    }
    assert "| ppo_continuous | Hopper-v5 | 2 |" in table  # the aggregate row


def test_smoothed_curve_and_interval():
    run = report.Run("r", "E", "x", 1, 0, episodes=np.array([[10, 1, 1.0], [20, 2, 3.0], [30, 3, 5.0]]))
    curve = report.smoothed_curve(run, np.array([5, 10, 25, 30]), window=2)
    assert np.isnan(curve[0]) and curve[1:].tolist() == [1.0, 2.0, 4.0]
    mean, low, high = report.mean_and_interval(np.array([[1.0, 2.0, np.nan], [3.0, 2.0, np.nan]]))
    assert mean[:2].tolist() == [2.0, 2.0] and np.isnan(mean[2])
    assert low[0] >= 1.0 and high[0] <= 3.0 and low[0] < 2.0 < high[0]  # resampled seed means lie in [1, 3]
    assert low[1] == high[1] == 2.0


def test_aggregate_normalises_and_bootstraps_with_rliable():
    """CartPole returns 250 (score 0.5) and Acrobot -100 (score 0.8) for both seeds: every bootstrap sample
    has the same mean, 0.65; a run of an env without normalisation bounds is left out."""

    def fake(env_id, seed, value):
        return report.Run("r", env_id, "algo", seed, 0, episodes=np.array([[1, 1, value]]))

    runs = [fake("CartPole-v1", s, 250.0) for s in (1, 2)] + [fake("Acrobot-v1", s, -100.0) for s in (1, 2)]
    runs.append(fake("NoBounds-v0", 1, 5.0))
    result = report.aggregate(runs, reps=200)
    assert set(result) == {"algo"}
    assert result["algo"]["envs"] == ["Acrobot-v1", "CartPole-v1"] and result["algo"]["seeds"] == 2
    assert np.allclose(result["algo"]["mean"], 0.65) and np.allclose(result["algo"]["iqm"], 0.65)


def write_logged_run(name, returns, steps, budget, eval_returns=(), world_size=1):
    """A run as the scripts log it: episodes, SPS once per 100-step iteration up to its last step, the
    hyperparameters table that holds its budget (num_iterations x batch_size x world_size: under torchrun each of
    world_size processes steps batch_size per iteration), and the greedy evaluation."""
    with SummaryWriter(f"runs/{name}") as writer:
        for idx, value in enumerate(eval_returns):
            writer.add_scalar("eval/episodic_return_greedy", value, idx)
        table = f"|num_iterations|{budget // 100}|\n|batch_size|{100 // world_size}|\n|world_size|{world_size}|"
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
        for step, value in zip(steps, returns):
            writer.add_scalar("charts/episodic_return", value, step)
        for step in range(100, steps[-1] + 1, 100):
            writer.add_scalar("charts/SPS", 1000, step)


def test_incomplete_and_failed_runs_are_listed_apart_and_only_the_best_is_bold(workdir):
    steps = np.arange(1, 31) * 100
    write_logged_run("CartPole-v1__ppo_discrete__1__100", np.full(30, 500.0), steps, 3000)
    write_logged_run("CartPole-v1__ppo_discrete__2__100", np.full(30, 100.0), steps, 3000)
    write_logged_run("CartPole-v1__ppo_discrete__3__100", np.full(10, 9.0), steps[:10], 3000)  # killed at 1000 steps
    write_logged_run("CartPole-v1__a2c_baseline__1__100", np.full(30, 200.0), steps, 3000)
    manifest = {"a2c_baseline.py/CartPole-v1/seed2": {"status": "failed", "returncode": 1, "log": "x/run.log"}}
    (workdir / "runs" / "manifest.json").write_text(json.dumps(manifest))
    runs = report.load_runs("runs")
    assert [r.complete for r in runs] == [True, True, True, False] and runs[3].budget == 3000

    report.main(report.Args(("runs",), out="out"))
    table = (workdir / "out" / "results.md").read_text()
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| CartPole-v1")}
    assert rows["ppo_discrete"].startswith("| CartPole-v1 | ppo_discrete | 3k | 2 | **300.00 ± 282.84** |")
    assert rows["a2c_baseline"].startswith("| CartPole-v1 | a2c_baseline | 3k | 1 | 200.00 |")  # not bold
    assert "- ppo_discrete/CartPole-v1/seed3: incomplete (1,000 of 3,000 steps)" in table
    assert "- a2c_baseline.py/CartPole-v1/seed2: failed (exit 1), see x/run.log" in table


def test_run_names_with_a_same_second_suffix_are_read():
    write_run("Hopper-v5__ppo_continuous__1__100", np.full(3, 1.0), [1, 2, 3])
    write_run("Hopper-v5__ppo_continuous__1__100-2", np.full(3, 2.0), [1, 2, 3])  # the later of the two
    (run,) = report.load_runs("runs")
    assert run.start == (100, 2) and report.final_return(run) == 2.0


def test_each_published_figure_sits_beside_the_metric_it_used(workdir):
    """sb3-contrib's TRPO figure is a deterministic evaluation (± standard error): it goes in the evaluation
    column, next to the runs' greedy evaluation, never beside their training return."""
    steps = np.arange(1, 31) * 100
    write_logged_run("Hopper-v5__trpo_baseline__1__100", np.full(30, 1000.0), steps, 3000, eval_returns=[3000, 3100])
    write_logged_run("Hopper-v5__trpo_baseline__2__100", np.full(30, 1200.0), steps, 3000, eval_returns=[3300])
    report.main(report.Args(("runs",), out="out"))
    (row,) = [
        line for line in (workdir / "out" / "results.md").read_text().splitlines() if line.startswith("| Hopper-v5")
    ]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4:] == [
        "**1100.00 ± 141.42**",
        "1: 1000.00, 2: 1200.00",
        "-",
        "3175.00 ± 176.78 (2 seeds)",
        "3372.00 ± 215.00 s.e. (sb3-contrib docs/modules/trpo.md, RL Zoo settings, Hopper-v3, 1M steps, 3 seeds)",
        cells[9],
        "1,000",
    ]


def test_a_run_trained_longer_counts_with_its_new_budget(workdir):
    """A run resumed with a larger --total-timesteps logs its hyperparameters again: the last table is its budget."""
    with SummaryWriter("runs/Hopper-v5__ppo_continuous__1__100") as writer:  # the original run's table: 3000 steps
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n|num_iterations|30|\n|batch_size|100|")
    write_logged_run("Hopper-v5__ppo_continuous__1__100", np.full(60, 5.0), np.arange(1, 61) * 100, 6000)
    (run,) = report.load_runs("runs")
    assert run.budget == 6000 and run.complete


def test_speed_steady_sps_leaves_out_the_burn_in(tmp_path):
    """Steady-state SPS counts only the iterations after the burn-in: the slow first ones (compilation) are out."""
    from benchmarks.speed import steady_sps

    writer = SummaryWriter(str(tmp_path))
    # 10 iterations of 1000 steps: the first 3 take 30 s each (compiling), the others 0.5 s each
    wall = 0.0
    for i in range(1, 11):
        wall += 30.0 if i <= 3 else 0.5
        writer.add_scalar("charts/SPS", 0, i * 1000, walltime=wall)
    writer.close()
    assert steady_sps(str(tmp_path)) == pytest.approx(2000.0)
    assert steady_sps(str(tmp_path), burn_in=9) is None


def test_speed_seconds_to_return_is_the_first_time_the_window_mean_reaches_it(tmp_path):
    """The mean of the last 3 episodes first reaches 10 at the 5th episode (8, 10, 12), logged 105 s after the
    start; one episode too few, or a higher threshold, never reaches it."""
    from benchmarks.speed import seconds_to_return

    writer = SummaryWriter(str(tmp_path))
    for i, ret in enumerate([19, 2, 8, 10, 12, 3]):  # the first 2 average 10.5, but 2 are too few
        writer.add_scalar("charts/episodic_return", ret, i * 100, walltime=1000.0 + 25 * (i + 1))
    writer.close()
    assert seconds_to_return(str(tmp_path), 1020.0, 10.0, 3) == pytest.approx(105.0)
    assert seconds_to_return(str(tmp_path), 1020.0, 13.0, 3) is None
    assert seconds_to_return(str(tmp_path), 1020.0, 10.0, 7) is None


@pytest.mark.parametrize("script", ["ppo_atari.py", "ppo_discrete.py", "ppo_continuous.py"])
def test_update_profile_minibatch_is_one_the_script_steps_on(script):
    """benchmarks.update_profile's minibatch has the keys and shapes of the script's default minibatch: one eager
    minibatch_step takes it and moves the parameters."""
    from benchmarks.update_profile import minibatch

    module = importlib.import_module(script[: -len(".py")])
    agent, mb, args = minibatch(module, script)
    optimizer = module.make_optimizer(agent, args.learning_rate)
    before = [p.detach().clone() for p in agent.parameters()]
    losses, logratio = module.minibatch_step(agent, optimizer, mb, args, 0.5)
    assert logratio.shape == (args.minibatch_size,) and torch.isfinite(torch.stack(list(losses.values()))).all()
    assert all(not torch.equal(b, p) for b, p in zip(before, agent.parameters()))


def test_harness_names_and_messages(tmp_path):
    """Run folders without a colon (scp, TensorBoard's --logdir name:path), '1 seed', and the folder named in the
    error when it does not exist or none is given."""
    from benchmarks import report, run

    assert (
        run.env_folder("ppo_lstm:CartPoleNoVel-v1") == "CartPoleNoVel-v1"
        and run.env_folder("ALE/Pong-v5") == "ALE_Pong-v5"
    )
    assert (report.seeds(1), report.seeds(3)) == ("1 seed", "3 seeds")
    with pytest.raises(SystemExit, match="nowhere: no such directory"):
        report.main(report.Args(runs_dirs=(str(tmp_path / "nowhere"),)))
    with pytest.raises(SystemExit, match="name the runs folder"):
        report.main(report.Args(runs_dirs=()))


def test_a_torchrun_runs_budget_counts_every_process(workdir):
    """Under torchrun each of world_size processes steps batch_size per iteration: a 2-process run that stopped
    halfway is incomplete, and the table's steps column is the whole budget."""
    steps = np.arange(1, 31) * 100
    write_logged_run("Pong-v5__ppo_atari__1__100", np.full(30, 5.0), steps, 3000, world_size=2)
    write_logged_run("Pong-v5__ppo_atari__2__100", np.full(15, 5.0), steps[:15], 3000, world_size=2)  # stopped
    runs = report.load_runs("runs")
    assert [(r.budget, r.complete) for r in runs] == [(3000, True), (3000, False)]
    report.main(report.Args(("runs",), out="out"))
    table = (workdir / "out" / "results.md").read_text()
    assert "| Pong-v5 | ppo_atari | 3k | 1 |" in table
    assert "- ppo_atari/Pong-v5/seed2: incomplete (1,500 of 3,000 steps)" in table
