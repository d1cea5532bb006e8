"""Learning on fixed seeds with a margin: ppo_discrete.py, trpo_baseline.py and a2c_baseline.py solve CartPole-v1,
ppo_continuous.py InvertedPendulum-v5."""

import importlib

import numpy as np
import pytest

# Each script at its defaults on CartPole-v1, with the budget (env steps) it gets; the last 20 episodes must
# average over 195. What was measured at that budget, and what it costs:
# - ppo_discrete (CleanRL's defaults), 100k steps, ~10 s: seeds 1-5 295, 312, 241, 316, 223.
# - trpo_baseline (1 env x 2048, max KL 0.01), 24 iterations = 49,152 steps, ~15 s: seeds 1-5 500, 500, 500,
#   500, 486 at 50k steps.
# - a2c_baseline (4 envs x 5, RMSprop 7e-4 annealed to 0), 500k steps, ~60 s: A2C is unstable on CartPole at
#   shorter budgets (it reaches 400-500 and collapses again while the learning rate is high); the annealed end
#   is stable. Seeds 1-3, last 100 episodes (benchmarks.run --preset classic): 500.00, 500.00, 461.50.
CARTPOLE_BUDGETS = {"ppo_discrete": 100_000, "trpo_baseline": 49_152, "a2c_baseline": 500_000}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("name", list(CARTPOLE_BUDGETS))
def test_cartpole_is_solved_within_the_budget(name, seed):
    P = importlib.import_module(name)
    result = P.main(P.Args(env_id="CartPole-v1", seed=seed, total_timesteps=CARTPOLE_BUDGETS[name]))
    returns = [r for _, r, _ in result["episodes"]]
    assert np.mean(returns[-20:]) >= 195


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_inverted_pendulum_learns_within_61k_steps(ppo_continuous, seed):
    """CleanRL's MuJoCo defaults, 30 iterations of 2048 steps (about 35 s): the last 20 episodes average over
    700 (the maximum is 1000). Measured for seeds 1-3: 1000, 1000, 1000 (seed 1 was at 885 after 37k steps)."""
    result = ppo_continuous.main(ppo_continuous.Args(env_id="InvertedPendulum-v5", seed=seed, total_timesteps=61_440))
    returns = [r for _, r, _ in result["episodes"]]
    assert np.mean(returns[-20:]) >= 700
