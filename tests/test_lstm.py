"""ppo_lstm.py: the recurrent state (replayed exactly by the update, zeroed at episode starts and only there, the
truncation bootstrap seen with the episode's state), sequence minibatches, CartPoleNoVel-v1 on both backends, the
task defaults, short runs from vectors and from pixels, resume, video, and learning against ppo_discrete.py."""

import glob
import importlib
import math
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import learning

P = importlib.import_module("ppo_lstm")


def tiny(**kw):
    """4 iterations of 4 envs x 32 steps on CartPoleNoVel-v1 (episodes of ~20 random steps: several starts per
    rollout), 2 minibatches of 2 envs."""
    defaults = dict(num_envs=4, num_steps=32, total_timesteps=512, num_minibatches=2, update_epochs=2, norm_obs=False)
    return P.Args(**{**defaults, **kw})


def atari(**kw):
    """2 iterations of 2 Breakout games x 32 steps."""
    defaults = dict(env_id="Breakout-v5", num_envs=2, num_steps=32, total_timesteps=128, num_minibatches=2)
    return P.Args(**{**defaults, "update_epochs": 1, "torch_threads": 1, **kw})


def record_updates(monkeypatch):
    """Record, at each update phase, the batch and a copy of the agent as the rollout left it (before any step)."""
    real_update, calls = P.ppo_update, []

    def update(agent, optimizer, batch, args, kl_beta, *update_step):
        snapshot = P.Agent(tuple(batch["obs"].shape[2:]), batch["logp_all"].shape[-1])
        snapshot.load_state_dict(agent.state_dict())
        calls.append((snapshot, {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}))
        return real_update(agent, optimizer, batch, args, kl_beta, *update_step)

    monkeypatch.setattr(P, "ppo_update", update)
    return calls


# --- the recurrent state ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["vector", "vector-norm-obs", "pixels"])
def test_the_update_replays_the_rollout_exactly(monkeypatch, task):
    """Before any gradient step, the update's forward pass (whole sequences from the stored initial state, the
    encoder batched, the LSTM in stretches between episode starts) gives the rollout's log-probabilities of every
    action and values, for every step, for the whole batch and for each minibatch's envs alone. With --norm-obs
    the rollout stores the observations as normalised when they were acted on."""
    calls = record_updates(monkeypatch)
    if task == "pixels":
        P.main(atari(num_envs=4, num_minibatches=2, total_timesteps=256))
    else:
        P.main(tiny(norm_obs=task == "vector-norm-obs"))
    assert len(calls) >= 2
    for agent, batch in calls:
        with torch.no_grad():
            for envs in (torch.arange(batch["starts"].shape[1]), torch.tensor([2, 0]), torch.tensor([1])):
                state = tuple(s[:, envs] for s in batch["state"])
                output, _ = agent.unroll(batch["obs"][:, envs], state, batch["starts"][:, envs])
                logp_all = torch.log_softmax(agent.actor(output), -1)
                torch.testing.assert_close(logp_all, batch["logp_all"][:, envs], rtol=1e-5, atol=2e-6)
                torch.testing.assert_close(
                    agent.critic(output).squeeze(-1), batch["values"][:, envs], rtol=1e-5, atol=2e-6
                )
    # the later rollouts start from a carried-over state, not from zeros
    assert any(batch["state"][0].abs().sum() > 0 for _, batch in calls[1:])


def test_the_state_is_zeroed_at_episode_starts_and_only_there(monkeypatch):
    """At a step whose observation starts an episode, the LSTM output is that of the zero state (no memory of the
    previous episode); at every other step it is not. Starts come one step after a reset step (the step after an
    episode ended, whose action the env ignored and which the losses leave out)."""
    calls = record_updates(monkeypatch)
    P.main(tiny())
    starts_seen = 0
    for agent, batch in calls:
        starts, valid = batch["starts"], batch["valid"]
        np.testing.assert_array_equal(starts[1:].numpy(), ~valid[:-1].numpy())
        T, N = starts.shape
        with torch.no_grad():
            output, _ = agent.unroll(batch["obs"], batch["state"], starts)
            zero = agent.initial_state(T * N, torch.device("cpu"))
            alone, _ = agent.step(batch["obs"].reshape(T * N, -1), zero, torch.ones(T * N))
        same = torch.isclose(output.reshape(T * N, -1), alone, rtol=1e-5, atol=1e-6).all(-1).view(T, N)
        np.testing.assert_array_equal(same.numpy(), starts.numpy())
        starts_seen += int(starts.sum())
    assert starts_seen >= 10


def test_a_truncated_episode_bootstraps_from_its_final_observation_with_its_state(monkeypatch):
    """tests/StepCount-v0 truncates after 5 steps, its final observation [5, .5, .5] differs from the reset one. The
    truncated step's advantage is r + gamma * V(final observation) - V(s), V(final observation) being the value the
    LSTM gave it with the episode's state (no zeroing before it); the reset observation after it starts afresh."""
    calls = record_updates(monkeypatch)
    P.main(tiny(env_id="tests/StepCount-v0", num_envs=2, num_steps=16, total_timesteps=64, update_epochs=1))
    args, checked = P.with_task_defaults(tiny()), 0
    for agent, batch in calls:
        obs, starts, values, adv = batch["obs"], batch["starts"], batch["values"], batch["advantages"]
        for t, n in zip(*np.nonzero(obs[:-1, :, 0].numpy() == 4)):  # step t truncates: obs[t + 1] is the final one
            if t + 2 >= obs.shape[0]:
                continue
            assert obs[t + 1, n, 0] == 5 and not starts[t + 1, n] and starts[t + 2, n] and obs[t + 2, n, 0] == 0
            assert adv[t, n].item() == pytest.approx(
                1 + args.gamma * values[t + 1, n].item() - values[t, n].item(), abs=1e-5
            )
            checked += 1
    assert checked >= 3


def test_minibatches_are_whole_env_sequences_covering_every_env_once_per_epoch(monkeypatch):
    calls = record_updates(monkeypatch)
    P.main(tiny(num_envs=4, num_minibatches=2, total_timesteps=128, update_epochs=1))
    agent, batch = calls[0]
    batch["obs"][..., 1] = torch.arange(4.0)  # a velocity entry (always 0) now names the env
    seen = []
    real_unroll = agent.unroll
    agent.unroll = lambda x, state, starts: seen.append(x[:, :, 1]) or real_unroll(x, state, starts)
    args = P.with_task_defaults(tiny(num_envs=4, num_minibatches=2, update_epochs=3))
    stats = P.ppo_update(agent, P.make_optimizer(agent, 1e-4), batch, args, kl_beta=1.0)
    assert stats["minibatch_updates"] == 6 and len(seen) == 6
    for epoch in range(3):
        envs = [mb[0].tolist() for mb in seen[2 * epoch : 2 * epoch + 2]]
        assert all(len(e) == 2 for e in envs) and sorted(envs[0] + envs[1]) == [0.0, 1.0, 2.0, 3.0]
        assert all(mb.shape[0] == 32 and (mb == mb[0]).all() for mb in seen[2 * epoch : 2 * epoch + 2])  # all T steps


def test_num_minibatches_must_divide_num_envs():
    with pytest.raises(
        P.UsageError, match="^--num-minibatches 3 must divide --num-envs 4: a minibatch is a set of whole"
    ):
        P.main(tiny(num_minibatches=3))


def test_agent_encoders_and_lstm_init():
    torch.manual_seed(0)
    vector, pixels = P.Agent((4,), 2), P.Agent((1, 84, 84), 4)
    assert [type(m).__name__ for m in vector.network] == ["Linear", "Tanh", "Linear", "Tanh"]
    assert vector.network[0].in_features == 4 and vector.lstm.input_size == 64 and vector.lstm.hidden_size == 128
    assert pixels.network[0].in_channels == 1 and pixels.lstm.input_size == 512
    for agent in (vector, pixels):
        for name, p in agent.lstm.named_parameters():
            if "bias" in name:
                assert (p == 0).all()
            else:  # orthogonal, gain 1: the rows (4 gates x 128) of each [512, k] matrix... columns orthonormal
                w = p.detach()
                torch.testing.assert_close(
                    w.T @ w if w.shape[0] > w.shape[1] else w @ w.T, torch.eye(min(w.shape)), atol=1e-4, rtol=0
                )
        assert agent.actor.weight.std() < 0.05 and agent.actor.out_features in (2, 4)
    out, state = pixels.step(
        torch.zeros(3, 1, 84, 84, dtype=torch.uint8), pixels.initial_state(3, "cpu"), torch.ones(3)
    )
    assert out.shape == (3, 128) and state[0].shape == (1, 3, 128)


# --- environments and defaults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_cartpole_no_velocity_hides_the_velocities(backend):
    envs, obs = P.make_envs(P.Args(env_backend=backend, num_envs=3), 3, seed=1)
    observations = [obs]
    for _ in range(30):
        obs, *_ = envs.step(np.ones(3, dtype=np.int64))
        observations.append(obs)
    envs.close()
    observations = np.stack(observations)
    assert observations.shape == (31, 3, 4) and observations.dtype == np.float32
    assert (observations[..., [1, 3]] == 0).all() and (observations[..., [0, 2]] != 0).any()
    # positions move (pushed right every step): the hidden velocities are there, only not shown
    assert (np.abs(np.diff(observations[:8, :, 2], axis=0)) > 0).all()


def test_cartpole_no_velocity_is_cartpole_with_velocities_zeroed():
    masked, full = gym.make("CartPoleNoVel-v1"), gym.make("CartPole-v1")
    assert masked.spec.max_episode_steps == 500 and masked.spec.reward_threshold == 475
    a, _ = masked.reset(seed=3)
    b, _ = full.reset(seed=3)
    for _ in range(8):
        np.testing.assert_array_equal(a, b * np.array([1, 0, 1, 0], np.float32))
        a, *_ = masked.step(0)
        b, *_ = full.step(0)


def test_task_defaults_per_task():
    """Atari: CleanRL's ppo_atari_lstm.py. Vectors: the settings that solve CartPoleNoVel-v1 in 500k steps (RL Zoo's
    recurrent PPO, lr 5e-4, value coefficient 0.25)."""
    vector, atari_ = P.with_task_defaults(P.Args()), P.with_task_defaults(P.Args(env_id="Pong-v5"))
    names = ["env_backend", "total_timesteps", "num_envs", "num_steps", "learning_rate", "gamma", "gae_lambda"]
    names += ["num_minibatches", "update_epochs", "clip_coef", "ent_coef", "vf_coef"]
    assert [getattr(vector, n) for n in names] == ["gymnasium", 500_000, 8, 32, 5e-4, 0.98, 0.8, 2, 10, 0.2, 0.0, 0.25]
    assert [getattr(atari_, n) for n in names] == [
        "envpool",
        10_000_000,
        8,
        128,
        2.5e-4,
        0.99,
        0.95,
        4,
        4,
        0.1,
        0.01,
        0.5,
    ]
    given = P.with_task_defaults(P.Args(env_id="Pong-v5", num_envs=16, clip_coef=0.3, env_backend="ale"))
    assert (given.num_envs, given.clip_coef, given.env_backend) == (16, 0.3, "ale")
    assert not P.atari_game("Hopper-v5") and not P.atari_game("CartPole-v1") and P.atari_game("MontezumaRevenge-v5")


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(env_id="Breakout-v5", env_backend="gymnasium"), "Atari games run on --env-backend envpool or ale"),
        (dict(env_backend="ale"), "--env-backend ale runs Atari games"),
        (dict(env_id="Pendulum-v1"), "action space Box.* is not Discrete"),
        (dict(env_id="NoSuchEnv-v0"), "not a registered gymnasium environment"),
        (dict(env_id="Breakout-v5", norm_obs=True), "^--norm-obs is for vector observations, not the frames of"),
    ],
)
def test_bad_env_choices_are_one_line_errors(workdir, kw, message):
    with pytest.raises(P.UsageError, match=message):
        P.main(tiny(**kw))
    assert os.listdir(workdir) == []


# --- runs ------------------------------------------------------------------------------------------------------


def finite(history):
    return all(math.isfinite(v) for h in history for k, v in h.items() if k != "losses/explained_variance")


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_short_run_from_vectors(backend):
    result = P.main(tiny(env_backend=backend, eval_episodes=2, loss_type="kl-penalty", target_kl=0.5))
    assert len(result["history"]) == 4 and finite(result["history"])
    assert result["history"][-1]["charts/learning_rate"] == pytest.approx(5e-4 / 4)
    assert (
        result["episodes"]
        and all(e[2] > 0 for e in result["episodes"])
        and set(result["eval"]) == {"sampled", "greedy"}
    )


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_short_run_from_pixels(backend):
    result = P.main(atari(env_backend=backend, eval_episodes=1))
    assert len(result["history"]) == 2 and finite(result["history"]) and result["args"].clip_coef == 0.1
    assert set(result["eval"]) == {"sampled", "greedy"}


def test_norm_obs_normalises_with_running_statistics_saved_with_the_agent(monkeypatch):
    """--norm-obs: every observation (the first reset's and each step's, 4 envs x (1 + 128)) enters the running
    statistics once; the stored observations are normalised (the positions' scale is that of a unit variance, not
    CartPole's few hundredths of a radian); the statistics are saved in the checkpoint and evaluation leaves them
    as they were. Without the flag the observations are stored raw."""
    calls = record_updates(monkeypatch)
    result = P.main(tiny(norm_obs=True, save_model=True, eval_episodes=2))
    rms = result["agent"].obs_rms
    assert rms.count == pytest.approx(4 * 129 + 1e-4) and (rms.var[[1, 3]] < 1e-6).all() and (rms.var[[0, 2]] > 0).all()
    obs = calls[-1][1]["obs"]
    assert 0.5 < obs[..., 2].std() < 2 and (obs[..., [1, 3]] == 0).all()
    saved = torch.load(f"{result['run_dir']}/checkpoint.pt", weights_only=True)["agent"]["_extra_state"]
    np.testing.assert_array_equal(saved["obs_var"].numpy(), rms.var)
    assert saved["obs_count"].item() == rms.count
    calls.clear()
    P.main(tiny())
    assert calls[-1][1]["obs"][..., 2].abs().max() < 0.25  # raw angles (radians)


def test_same_seed_same_run():
    a, b = P.main(tiny()), P.main(tiny())
    assert learning(a) == learning(b) and a["episodes"] == b["episodes"]


@pytest.mark.parametrize("norm_obs", [False, True])
def test_resume_from_vectors_is_exact(monkeypatch, norm_obs):
    """SIGTERM during iteration 2 stops after it with a checkpoint; resuming it (actions replayed, recurrent state
    restored, and with --norm-obs the observation statistics) ends with what 4 iterations at once compute, bit for
    bit."""
    whole = P.main(tiny(norm_obs=norm_obs))
    real_update, calls = P.ppo_update, []

    def update(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_update(*a, **k)

    monkeypatch.setattr(P, "ppo_update", update)
    stopped = P.main(tiny(save_model=True, norm_obs=norm_obs))
    monkeypatch.setattr(P, "ppo_update", real_update)
    assert len(stopped["history"]) == 2
    ckpt = torch.load(f"{stopped['run_dir']}/checkpoint.pt", weights_only=True)
    assert ckpt["actions"].shape == (64, 4) and ckpt["lstm_state"][0].abs().sum() > 0
    rest = P.main(P.parse_args(["--resume", f"{stopped['run_dir']}/checkpoint.pt"]))
    assert learning(stopped) + learning(rest) == learning(whole)
    assert stopped["episodes"] + [e for e in rest["episodes"] if e not in stopped["episodes"]] == whole["episodes"]
    for p, q in zip(rest["agent"].parameters(), whole["agent"].parameters()):
        assert torch.equal(p, q)


def test_resume_from_pixels_restores_the_learner_and_starts_new_games():
    first = P.main(atari(save_model=True))
    path = f"{first['run_dir']}/checkpoint.pt"
    saved = torch.load(path, weights_only=True)["agent"]
    rest = P.main(P.parse_args(["--resume", path, "--total-timesteps", "256"]))
    assert len(rest["history"]) == 2 and rest["run_dir"] == first["run_dir"]
    changed = [k for k, v in rest["agent"].named_parameters() if not torch.equal(v, saved[k])]
    assert changed  # it trained on from the saved agent


def test_capture_video_from_vectors(capsys):
    result = P.main(tiny(capture_video=True))
    assert len(glob.glob(f"videos/{result['run_name']}/*.mp4")) == 1
    assert "video of one episode (return " in capsys.readouterr().out


def test_capture_video_from_pixels_records_one_whole_game(capsys):
    result = P.main(atari(capture_video=True))
    videos = glob.glob(f"videos/{result['run_name']}/*.mp4")
    assert len(videos) == 1
    from moviepy import VideoFileClip

    clip = VideoFileClip(videos[0])
    assert clip.get_frame(0).shape == (210, 160, 3) and clip.n_frames > 300


@pytest.mark.slow
def test_memory_beats_the_memoryless_policy_on_cartpole_no_velocity(ppo_discrete):
    """CartPoleNoVel-v1 at the pomdp preset's settings, the same 98,304 steps for both (about 100 s): ppo_lstm.py's
    last 20 episodes average over 100 and over twice ppo_discrete.py's, which cannot tell where the pole is going
    (in the preset's runs, seed 1: ppo_lstm ~150-310 around 55k-95k steps, ppo_discrete ~42-46 throughout; at
    61,440 steps ppo_lstm was in a dip at 74). A state that is never kept (zeroed every step) makes ppo_lstm.py
    memoryless too, and fails this."""
    flags = dict(num_envs=8, num_steps=32, num_minibatches=2, update_epochs=10, learning_rate=5e-4, vf_coef=0.25)
    flags.update(gamma=0.98, gae_lambda=0.8, ent_coef=0.0, total_timesteps=98_304, seed=1)
    recurrent = np.mean([r for _, r, _ in P.main(P.Args(**flags))["episodes"][-20:]])
    args = ppo_discrete.Args(env_id="ppo_lstm:CartPoleNoVel-v1", **flags)
    memoryless = np.mean([r for _, r, _ in ppo_discrete.main(args)["episodes"][-20:]])
    assert recurrent > 100 and recurrent > 2 * memoryless, (recurrent, memoryless)


def test_cleanrl_atari_ids_are_atari_games_here(capsys):
    """`ALE/Breakout-v5` (once answered with gymnasium's misleading 'Namespace ALE not found') and
    `BreakoutNoFrameskip-v4` are Breakout-v5, with the Atari defaults; a mistyped game gets a suggestion."""
    for env_id in ("ALE/Breakout-v5", "BreakoutNoFrameskip-v4"):
        args = P.with_task_defaults(P.cleanrl_atari_id(P.Args(env_id=env_id)))
        assert (args.env_id, args.num_steps, args.env_backend) == ("Breakout-v5", 128, "envpool")
        assert "plays Breakout-v5 here" in capsys.readouterr().out
    with pytest.raises(
        P.UsageError, match="--env-id Breakot-v5: ale-py has no ROM 'breakot'; did you mean Breakout-v5"
    ):
        P.env_spaces("Breakot-v5", "gymnasium")
