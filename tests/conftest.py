"""Shared fixtures: the algorithm scripts as modules, a private working directory per test, tiny envs."""

import importlib
import os
import signal
import sys
import tempfile
from pathlib import Path

# The suite runs torch.compile'd functions eagerly: TORCH_COMPILE_DISABLE is read when torch is first imported, and
# the scripts the tests start inherit it. ppo_continuous.py compiles by default, and compiling in every test that
# runs it would take minutes; tests/test_compile.py turns compilation back on for its own tests.
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
# A compile cache of the suite's own, new each session: what the machine cached before cannot change a result.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-cache-"))

import gymnasium as gym  # noqa: E402
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# A suite started in the background (`python -m pytest &` in a script) inherits SIGINT ignored, and so would every
# script the tests start, where the Ctrl-C tests need it delivered: restore Python's default handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Scripts whose shared maths and behaviour (GAE, losses, KL, schedules, checkpoints, resume, logging, errors)
# the parametrised tests check: the PPO scripts, and the baselines (which take either action type).
PPO_SCRIPTS = ["ppo_discrete", "ppo_continuous"]
BASELINE_SCRIPTS = ["trpo_baseline", "a2c_baseline"]
ALL_SCRIPTS = PPO_SCRIPTS + BASELINE_SCRIPTS
# Each script's update phase (called once per iteration, after the rollout).
UPDATE_FUNCTIONS = {
    "ppo_discrete": "ppo_update",
    "ppo_continuous": "ppo_update",
    "trpo_baseline": "trpo_update",
    "a2c_baseline": "a2c_update",
}

# Per script: a cheap env for end-to-end runs (short episodes), the constant-reward env with its action type,
# an env of the other action type with the error it gets, and an env to record videos of.
TEST_ENVS = {
    "ppo_discrete": dict(
        env_id="CartPole-v1",
        constant="tests/ConstantReward-v0",
        wrong=("Pendulum-v1", "action space Box.* is not Discrete"),
        video="CartPole-v1",
    ),
    "ppo_continuous": dict(
        env_id="InvertedPendulum-v5",
        constant="tests/ConstantRewardBox-v0",
        wrong=("CartPole-v1", "action space Discrete.* is not a flat Box"),
        video="Pendulum-v1",  # rendered by pygame: MuJoCo needs an OpenGL backend (EGL) that CI may lack
    ),
    **{
        name: dict(
            env_id="CartPole-v1",
            constant="tests/ConstantReward-v0",
            wrong=("Blackjack-v1", "observation space Tuple.* is not a flat Box"),
            video="CartPole-v1",
            box="InvertedPendulum-v5",  # the baselines' Box-action counterparts
            constant_box="tests/ConstantRewardBox-v0",
        )
        for name in BASELINE_SCRIPTS
    },
}


# Flags only some scripts have; tiny() drops them for the others (A2C has no minibatches, TRPO no value clipping;
# A2C logs its losses every --log-every iterations, every iteration here).
OPTIONAL_FLAGS = {"num_minibatches", "update_epochs", "clip_vloss", "log_every"}


def tiny(P, **kw):
    """4 iterations of 2 envs x 16 steps on the script's cheap test env: a run of about a second."""
    defaults = dict(
        env_id=TEST_ENVS[P.__name__]["env_id"],
        num_envs=2,
        num_steps=16,
        total_timesteps=128,
        num_minibatches=2,
        update_epochs=2,
        log_every=1,
    )
    kw = {k: v for k, v in {**defaults, **kw}.items() if k in P.Args.__dataclass_fields__ or k not in OPTIONAL_FLAGS}
    return P.Args(**kw)


def learning(result):
    """What a run computed, per iteration: every logged scalar except the wall-clock SPS."""
    return [{k: v for k, v in h.items() if k != "charts/SPS"} for h in result["history"]]


def interrupt_update(P, monkeypatch, call, interrupt):
    """Make the `call`-th update phase (the update of that iteration) run `interrupt()` first."""
    name = UPDATE_FUNCTIONS[P.__name__]
    real_update, calls = getattr(P, name), []

    def update(*a, **k):
        calls.append(1)
        if len(calls) == call:
            interrupt()
        return real_update(*a, **k)

    monkeypatch.setattr(P, name, update)


@pytest.fixture(params=PPO_SCRIPTS)
def script(request):
    """Each PPO script, imported as a module."""
    return importlib.import_module(request.param)


@pytest.fixture(params=ALL_SCRIPTS)
def any_script(request):
    """Every algorithm script (PPO and baselines), imported as a module."""
    return importlib.import_module(request.param)


@pytest.fixture(params=BASELINE_SCRIPTS)
def baseline(request):
    """Each baseline script (TRPO, A2C), imported as a module."""
    return importlib.import_module(request.param)


@pytest.fixture(params=["ppo_continuous", "trpo_baseline", "a2c_baseline"])
def normalising_script(request):
    """The scripts with observation and reward normalisation (the baselines' for Box action spaces)."""
    return importlib.import_module(request.param)


@pytest.fixture
def ppo_discrete():
    return importlib.import_module("ppo_discrete")


@pytest.fixture
def ppo_continuous():
    return importlib.import_module("ppo_continuous")


@pytest.fixture
def trpo_baseline():
    return importlib.import_module("trpo_baseline")


@pytest.fixture
def a2c_baseline():
    return importlib.import_module("a2c_baseline")


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    """Every test runs in its own directory (scripts write runs/ and videos/ relative to it), offline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield tmp_path
    if (
        sys.modules.get("wandb") is not None
    ):  # wandb keeps its settings (WANDB_DIR) per process: forget them between tests
        sys.modules["wandb"].teardown()


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


class ConstantRewardBoxEnv(ConstantRewardEnv):
    """ConstantRewardEnv with a 2-d Box action space in [-0.5, 0.5]; an action outside the bounds is an error,
    so a script that forgets to clip its Gaussian samples fails here."""

    action_space = gym.spaces.Box(-0.5, 0.5, (2,), np.float32)

    def step(self, action):
        if not self.action_space.contains(np.asarray(action, np.float32)):
            raise ValueError(f"action {action} outside the action space")
        return super().step(action)


class StepCountEnv(ConstantRewardEnv):
    """ConstantRewardEnv whose observation is the step within the episode: [t, 0.5, 0.5], t = 0 after a reset and
    5 at the time limit, so the final observation of a truncated episode differs from the reset observation."""

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.array([0.0, 0.5, 0.5], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t, 0.5, 0.5], np.float32), 1.0, False, False, {}


class StepCountBoxEnv(StepCountEnv):
    action_space = ConstantRewardBoxEnv.action_space


gym.register("tests/ConstantReward-v0", entry_point=ConstantRewardEnv, max_episode_steps=5)
gym.register("tests/StepCount-v0", entry_point=StepCountEnv, max_episode_steps=5)
gym.register("tests/StepCountBox-v0", entry_point=StepCountBoxEnv, max_episode_steps=5)
gym.register("tests/ConstantRewardBox-v0", entry_point=ConstantRewardBoxEnv, max_episode_steps=5)
