"""Shared fixtures: the algorithm scripts as modules, a private working directory per test, tiny envs."""

import importlib
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Scripts whose shared maths (GAE, losses, KL, schedules, checkpoints) the parametrised tests check.
PPO_SCRIPTS = ["ppo_discrete"]


@pytest.fixture(params=PPO_SCRIPTS)
def script(request):
    """Each PPO script, imported as a module."""
    return importlib.import_module(request.param)


@pytest.fixture
def ppo_discrete():
    return importlib.import_module("ppo_discrete")


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    """Every test runs in its own directory (scripts write runs/ and videos/ relative to it), offline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


class ConstantRewardEnv(gym.Env):
    """Reward 1 every step, a constant observation, never terminates: only the time limit ends an episode.

    The true value under discount gamma is 1 / (1 - gamma) in every state, because the time limit is not part
    of the task. Treating truncation as termination (or learning from the reset step) gives a lower value.
    """

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.full(3, 0.5, np.float32), {}

    def step(self, action):
        return np.full(3, 0.5, np.float32), 1.0, False, False, {}


gym.register("tests/ConstantReward-v0", entry_point=ConstantRewardEnv, max_episode_steps=5)
