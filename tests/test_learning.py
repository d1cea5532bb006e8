"""Learning on fixed seeds with a margin: ppo_discrete.py, trpo_baseline.py and a2c_baseline.py solve CartPole-v1,
ppo_continuous.py InvertedPendulum-v5."""

import numpy as np
import pytest


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cartpole_reaches_195_within_100k_steps(ppo_discrete, seed):
    """CleanRL's defaults, 100k steps (about 10 s): the last 20 episodes average over 195.
    Measured for seeds 1-5: 295, 312, 241, 316, 223."""
    result = ppo_discrete.main(ppo_discrete.Args(seed=seed, total_timesteps=100_000))
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


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_trpo_solves_cartpole_within_49k_steps(trpo_baseline, seed):
    """TRPO at its defaults (1 env x 2048 steps, max KL 0.01), 24 iterations (about 15 s): the last 20 episodes
    average over 195. Measured for seeds 1-5 at 50k steps: 500, 500, 500, 500, 486."""
    result = trpo_baseline.main(trpo_baseline.Args(env_id="CartPole-v1", seed=seed, total_timesteps=49_152))
    returns = [r for _, r, _ in result["episodes"]]
    assert np.mean(returns[-20:]) >= 195


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a2c_solves_cartpole_at_its_default_budget(a2c_baseline, seed):
    """A2C at its defaults (4 envs x 5 steps, RMSprop 7e-4 annealed to 0) over 500k steps (about 60 s): the last
    20 episodes average over 195. A2C is unstable on CartPole at shorter budgets (it reaches 400-500 and
    collapses again while the learning rate is high); the annealed end is stable. Measured (benchmarks.run
    --preset classic), last 100 episodes for seeds 1-3: 500.00, 500.00, 461.50."""
    result = a2c_baseline.main(a2c_baseline.Args(env_id="CartPole-v1", seed=seed, total_timesteps=500_000))
    returns = [r for _, r, _ in result["episodes"]]
    assert np.mean(returns[-20:]) >= 195
