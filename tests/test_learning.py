"""Learning on fixed seeds with a margin: ppo_discrete.py, trpo_baseline.py and a2c_baseline.py solve CartPole-v1,
ppo_continuous.py InvertedPendulum-v5."""

import importlib

import numpy as np
import pytest

# Each script at its defaults on CartPole-v1, with the budget (env steps) it gets and the mean of 20 consecutive
# episodes it must reach: a little under the lowest of seeds 1-3 as measured (2026-12-02, constraints.txt's
# environment; CPU runs are deterministic), far above what a random policy (~22) or a stalled one gets.
# - ppo_discrete (CleanRL's defaults), 100k steps, ~10 s, the last 20 episodes: seeds 1-3 309.6, 243.15, 252.6
#   (268.9, 284.6, 315.45 before the update moved to per-parameter fused Adam: float rounding, another trajectory).
# - trpo_baseline (1 env x 2048, max KL 0.01), 24 iterations = 49,152 steps, ~15 s, the last 20: 500, 500, 500.
# - a2c_baseline (4 envs x 5, RMSprop 7e-4 annealed to 0), 500k steps, ~60 s: the best 20 in a row 500, 500, 500.
#   A2C solves CartPole and can collapse again while the learning rate is high (seed 3's last 20: 119.85), so its
#   test asks that it got there, not that it stayed.
CARTPOLE_BUDGETS = {"ppo_discrete": (100_000, 220), "trpo_baseline": (49_152, 475), "a2c_baseline": (500_000, 450)}
STAYS_SOLVED = {"ppo_discrete": True, "trpo_baseline": True, "a2c_baseline": False}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("name", list(CARTPOLE_BUDGETS))
def test_cartpole_is_solved_within_the_budget(name, seed):
    P = importlib.import_module(name)
    budget, threshold = CARTPOLE_BUDGETS[name]
    result = P.main(P.Args(env_id="CartPole-v1", seed=seed, total_timesteps=budget))
    returns = [r for _, r, _ in result["episodes"]]
    reached = np.mean(returns[-20:]) if STAYS_SOLVED[name] else np.convolve(returns, np.ones(20) / 20, "valid").max()
    assert reached >= threshold


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_inverted_pendulum_is_balanced_within_61k_steps(ppo_continuous, seed):
    """CleanRL's MuJoCo defaults, 30 iterations of 2048 steps (about 35 s): the last 20 episodes average over
    950 (the maximum is 1000). Measured for seeds 1-3 (2026-11-23): 1000, 1000, 1000."""
    result = ppo_continuous.main(ppo_continuous.Args(env_id="InvertedPendulum-v5", seed=seed, total_timesteps=61_440))
    returns = [r for _, r, _ in result["episodes"]]
    assert np.mean(returns[-20:]) >= 950
