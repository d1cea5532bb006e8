"""The published figures this project compares against, each with its source, metric, budget and env version.

benchmarks.report puts a published return next to the result of the same metric only, and benchmarks.speed takes
its default reference SPS from here. Two metrics exist:

- TRAINING: the mean return of the last 100 training episodes (stochastic actions, as they were collected), the
  metric of CleanRL's benchmark tables and of this project's "return, last 100 episodes" columns;
- EVALUATION: the mean return of evaluation episodes after training with the deterministic (mean or greedy)
  action, the metric of RL Zoo's and sb3-contrib's tables and of this project's "eval" columns (the scripts'
  `--eval-episodes`, `eval/episodic_return_greedy`).

The spread is over seeds, as published: CleanRL's is the standard deviation, RL Zoo's the standard error.
"""

from dataclasses import dataclass

TRAINING = "training, last 100 episodes"
EVALUATION = "evaluation, deterministic action"


@dataclass(frozen=True)
class Published:
    """One published result: `mean` ± `spread` (`spread_kind`: "std" or "s.e." over `seeds` seeds)."""

    source: str
    env_version: str
    steps: int
    metric: str
    mean: float
    spread: float
    spread_kind: str
    seeds: int

    def text(self) -> str:
        """As the results tables write it: value, spread kind, and where it is from."""
        return (
            f"{self.mean:.2f} ± {self.spread:.2f} {self.spread_kind} ({self.source}, {self.env_version}, "
            f"{self.steps / 1e6:g}M steps, {self.seeds} seeds)"
        )


_CLEANRL = "CleanRL docs/benchmark, tag pr-424"
_SB3_TRPO = "sb3-contrib docs/modules/trpo.md, RL Zoo settings"

# By (script name without .py, env id this project runs).
RETURNS: dict[tuple[str, str], Published] = {
    ("ppo_discrete", "CartPole-v1"): Published(
        _CLEANRL + ", ppo.py", "CartPole-v1", 500_000, TRAINING, 490.04, 6.12, "std", 3
    ),
    ("ppo_discrete", "Acrobot-v1"): Published(
        _CLEANRL + ", ppo.py", "Acrobot-v1", 500_000, TRAINING, -86.36, 1.32, "std", 3
    ),
    ("ppo_discrete", "MountainCar-v0"): Published(
        _CLEANRL + ", ppo.py", "MountainCar-v0", 500_000, TRAINING, -200.00, 0.00, "std", 3
    ),
    ("ppo_continuous", "HalfCheetah-v5"): Published(
        _CLEANRL + ", ppo_continuous_action.py", "HalfCheetah-v4", 1_000_000, TRAINING, 1442.64, 46.03, "std", 3
    ),
    ("ppo_continuous", "Hopper-v5"): Published(
        _CLEANRL + ", ppo_continuous_action.py", "Hopper-v4", 1_000_000, TRAINING, 2382.86, 271.74, "std", 3
    ),
    ("ppo_continuous", "Walker2d-v5"): Published(
        _CLEANRL + ", ppo_continuous_action.py", "Walker2d-v4", 1_000_000, TRAINING, 2287.95, 571.78, "std", 3
    ),
    ("ppo_continuous", "InvertedPendulum-v5"): Published(
        _CLEANRL + ", ppo_continuous_action.py", "InvertedPendulum-v4", 1_000_000, TRAINING, 963.09, 22.20, "std", 3
    ),
    ("trpo_baseline", "HalfCheetah-v5"): Published(
        _SB3_TRPO, "HalfCheetah-v3", 1_000_000, EVALUATION, 1803.0, 46.0, "s.e.", 3
    ),
    ("trpo_baseline", "Hopper-v5"): Published(_SB3_TRPO, "Hopper-v3", 1_000_000, EVALUATION, 3372.0, 215.0, "s.e.", 3),
    ("trpo_baseline", "Walker2d-v5"): Published(
        _SB3_TRPO, "Walker2d-v3", 1_000_000, EVALUATION, 4502.0, 234.0, "s.e.", 3
    ),
    ("ppo_atari", "Pong-v5"): Published(
        _CLEANRL + ", ppo_atari_envpool.py", "Pong-v5", 10_000_000, TRAINING, 20.45, 0.09, "std", 3
    ),
    ("ppo_atari", "Breakout-v5"): Published(
        _CLEANRL + ", ppo_atari_envpool.py", "Breakout-v5", 10_000_000, TRAINING, 211.24, 151.84, "std", 3
    ),
    ("ppo_atari", "BeamRider-v5"): Published(
        _CLEANRL + ", ppo_atari_envpool.py", "BeamRider-v5", 10_000_000, TRAINING, 2501.85, 210.52, "std", 3
    ),
    # CleanRL's ppo_atari_lstm.py runs gymnasium's NoFrameskip-v4 games with the same preprocessing (one frame).
    ("ppo_lstm", "Pong-v5"): Published(
        _CLEANRL + ", ppo_atari_lstm.py", "PongNoFrameskip-v4", 10_000_000, TRAINING, 19.81, 0.62, "std", 3
    ),
    ("ppo_lstm", "Breakout-v5"): Published(
        _CLEANRL + ", ppo_atari_lstm.py", "BreakoutNoFrameskip-v4", 10_000_000, TRAINING, 113.42, 5.85, "std", 3
    ),
    ("ppo_lstm", "BeamRider-v5"): Published(
        _CLEANRL + ", ppo_atari_lstm.py", "BeamRiderNoFrameskip-v4", 10_000_000, TRAINING, 1299.25, 509.90, "std", 3
    ),
}

# SPS of each script's CleanRL counterpart at its defaults, measured on this project's 2-vCPU machines (AMD EPYC,
# torch 2.13 CPU, quiet machine): the default reference of benchmarks.speed.
SPS: dict[str, tuple[float, str]] = {
    "ppo_discrete.py": (5100.0, "CleanRL ppo.py, CartPole-v1, 4 envs x 128 steps"),
    "ppo_continuous.py": (1230.0, "CleanRL ppo_continuous_action.py, HalfCheetah-v4, 1 env x 2048 steps"),
    # shared/REFERENCE.md's 330 SPS was measured on a machine with AVX-512; on one without (2026-11-23), CleanRL's
    # script ran at 185-189 SPS: compare in the same run (see README).
    "ppo_atari.py": (330.0, "CleanRL ppo_atari_envpool.py (envpool 1.2 API), Breakout-v5, 8 envs x 128 steps"),
    # No published figure on these machines: measured beside ppo_lstm.py in the same run (see README).
    "ppo_lstm.py": (0.0, "CleanRL ppo_atari_lstm.py, Breakout, 8 envs x 128 steps: measure it in the same run"),
}
