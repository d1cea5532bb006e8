"""ppo_continuous.py's own behaviour: normalisation statistics as agent state, action clipping, checkpoints."""

import torch
from conftest import tiny


def test_normalisation_statistics_survive_save_load_and_evaluation(ppo_continuous):
    """The agent's observation statistics are in its state_dict and in the checkpoint; evaluation freezes them;
    so an agent loaded from the checkpoint scores exactly what the trained agent scored."""
    P = ppo_continuous
    result = P.main(tiny(P, save_model=True, eval_episodes=3))
    trained = result["agent"]
    stats = trained.get_extra_state()
    assert stats["obs_count"].item() > 100 and stats["obs_mean"].abs().sum() > 0  # updated during training
    for key, value in P.Agent(4, 1).get_extra_state().items():  # not the initial values
        assert not torch.equal(value, stats[key])

    ckpt = P.load_checkpoint(f"{result['run_dir']}/checkpoint.pt")
    assert {"_extra_state", "actor_logstd"} <= set(ckpt["agent"])
    loaded = P.Agent(4, 1)
    loaded.load_state_dict(ckpt["agent"])
    assert all(torch.equal(v, loaded.get_extra_state()[k]) for k, v in stats.items())

    args = tiny(P, eval_episodes=3)
    for greedy in (True, False):
        returns = P.evaluate(loaded, args, 3, greedy=greedy, device=torch.device("cpu"))
        assert returns.mean() == result["eval"]["greedy" if greedy else "sampled"]
    assert all(torch.equal(v, loaded.get_extra_state()[k]) for k, v in stats.items())  # evaluation froze them
    assert all(torch.equal(v, trained.get_extra_state()[k]) for k, v in stats.items())


def test_actions_are_stored_unclipped_and_clipped_for_the_env(ppo_continuous, monkeypatch):
    """ConstantRewardBox refuses actions outside [-0.5, 0.5]; the initial policy (std 1) samples far outside.
    The env only ever sees clipped actions, while the batch keeps the samples and their log-probabilities."""
    P = ppo_continuous
    batches = []
    real = P.ppo_update
    monkeypatch.setattr(
        P, "ppo_update", lambda agent, opt, batch, *a: (batches.append(batch), real(agent, opt, batch, *a))[1]
    )
    P.main(tiny(P, env_id="tests/ConstantRewardBox-v0", total_timesteps=32))
    (batch,) = batches
    assert batch["actions"].abs().max() > 1.0
    logprob, _ = P.logprobs_and_entropy(batch["means"], batch["logstds"], batch["actions"])
    assert torch.allclose(logprob, batch["logprobs"])


def test_checkpoint_keeps_reward_scaling_state(ppo_continuous):
    P = ppo_continuous
    result = P.main(tiny(P, save_model=True))
    ckpt = P.load_checkpoint(f"{result['run_dir']}/checkpoint.pt")
    scaling = ckpt["reward_scaling"]
    mean, var, count = scaling["return_rms"].tolist()
    assert count > 100 and var > 0
    assert scaling["discounted_return"].shape == (2,) and scaling["discounted_return"].dtype == torch.float64
    assert ckpt["actions"].shape == (64, 2, 1) and ckpt["actions"].dtype == torch.float32


def test_checkpoint_and_resume_with_reward_scaling_off(ppo_continuous):
    """Regression: with --no-norm-reward the untouched statistics (0-d arrays) made the checkpoint crash."""
    P = ppo_continuous
    result = P.main(tiny(P, save_model=True, norm_reward=False, total_timesteps=64))
    ckpt = f"{result['run_dir']}/checkpoint.pt"
    assert P.load_checkpoint(ckpt)["reward_scaling"]["return_rms"].tolist() == [0.0, 1.0, 1e-4]
    resumed = P.main(P.parse_args(["--resume", ckpt, "--total-timesteps", "96"]))
    assert len(resumed["history"]) == 1


def test_dm_control_through_envpool_gets_flattened_observations(ppo_continuous):
    """envpool's dm_control tasks have Dict observations (position, velocity): the script concatenates them."""
    P = ppo_continuous
    result = P.main(tiny(P, env_id="CheetahRun-v1", env_backend="envpool", total_timesteps=64, eval_episodes=1))
    assert result["agent"].critic[0].in_features == 17 and len(result["history"]) == 2
    assert 0 <= result["eval"]["greedy"] <= 1000  # one full 1000-step episode, reward in [0, 1] per step


def test_cleanrl_mujoco_v4_ids_run(ppo_continuous):
    """CleanRL's MuJoCo commands name -v4 envs; gymnasium still has them."""
    obs_space, act_space = ppo_continuous.check_env(ppo_continuous.Args(env_id="HalfCheetah-v4"))
    assert obs_space.shape == (17,) and act_space.shape == (6,)
