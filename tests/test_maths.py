"""The algorithm's maths against naive references and closed forms."""

import importlib

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny
from gymnasium.wrappers.utils import RunningMeanStd


def random_rollout(T, N, seed, p_end=0.15):
    """Random next-step-autoreset data: after a step that ends an episode comes a reset step (reward 0,
    neither terminated nor truncated), as gymnasium 1.x and envpool produce. Step 0 of env 0 is a reset
    step carried over from the previous rollout."""
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    terms = np.zeros((T, N), np.float32)
    truncs = np.zeros((T, N), np.float32)
    is_reset = np.zeros((T, N), bool)
    is_reset[0, 0] = True
    for n in range(N):
        for t in range(T):
            if is_reset[t, n]:
                rewards[t, n] = 0.0
                continue
            u = rng.random()
            if u < p_end:
                terms[t, n] = 1.0
            elif u < 2 * p_end:
                truncs[t, n] = 1.0
            if (terms[t, n] or truncs[t, n]) and t + 1 < T:
                is_reset[t + 1, n] = True
    values = rng.normal(size=(T + 1, N)).astype(np.float32)
    return rewards, values, terms, truncs, is_reset


def naive_gae(rewards, values, terms, truncs, is_reset, gamma, lam):
    """Per-episode GAE, one env at a time, written from the definition: each episode's transitions are
    collected, bootstrapped at their end (0 if terminated; V(final observation) if truncated or cut by the
    rollout's end) and discounted backwards. Reset steps are no transition and get NaN."""
    T, N = rewards.shape
    adv = np.full((T, N), np.nan)
    for n in range(N):
        t = 0
        while t < T:
            if is_reset[t, n]:
                t += 1
                continue
            episode = []
            while t < T:
                episode.append(t)
                if terms[t, n] or truncs[t, n]:
                    break
                t += 1
            last = episode[-1]
            bootstrap = 0.0 if terms[last, n] else values[last + 1, n]
            next_values = [values[i + 1, n] for i in episode[:-1]] + [bootstrap]
            running = 0.0
            for i, nv in reversed(list(zip(episode, next_values))):
                delta = rewards[i, n] + gamma * nv - values[i, n]
                running = delta + gamma * lam * running
                adv[i, n] = running
            t = last + 1
    return adv


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_naive_per_episode_reference(any_script, seed):
    rewards, values, terms, truncs, is_reset = random_rollout(64, 6, seed)
    expected = naive_gae(rewards, values, terms, truncs, is_reset, 0.99, 0.95)
    got = any_script.compute_gae(*map(torch.from_numpy, (rewards, values, terms, truncs)), 0.99, 0.95).numpy()
    valid = ~is_reset
    assert terms.sum() > 3 and truncs.sum() > 3 and is_reset.sum() > 6  # the data exercises every case
    np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-5, atol=1e-5)


def test_gae_truncation_bootstraps_and_termination_does_not(any_script):
    """Constant reward 1 and the true value 1/(1-gamma) everywhere: every TD error is 0 when a truncated
    step bootstraps from V(final observation); a terminated step has advantage r - V."""
    gamma, v = 0.9, 10.0
    T = 6
    rewards = torch.tensor([[1.0], [1.0], [1.0], [0.0], [1.0], [1.0]])  # step 3 is the reset step
    values = torch.full((T + 1, 1), v)
    truncs = torch.tensor([[0.0], [0.0], [1.0], [0.0], [0.0], [0.0]])
    terms = torch.zeros(T, 1)
    adv = any_script.compute_gae(rewards, values, terms, truncs, gamma, 0.95)
    assert torch.allclose(adv[[0, 1, 2, 4, 5]], torch.zeros(5, 1), atol=1e-5)
    terms_at_2 = truncs.clone()
    adv_term = any_script.compute_gae(rewards, values, terms_at_2, torch.zeros(T, 1), gamma, 0.95)
    assert adv_term[2, 0] == pytest.approx(1.0 - v)


def test_gae_never_crosses_an_episode_boundary(any_script):
    rewards, values, terms, truncs, is_reset = random_rollout(40, 3, 7)
    ended = np.argwhere((terms + truncs)[:-2] > 0)
    t, n = ended[0]
    base = any_script.compute_gae(*map(torch.from_numpy, (rewards, values, terms, truncs)), 0.99, 0.95)
    later_rewards = rewards.copy()
    later_rewards[t + 2 :, n] += 100.0  # change only what comes after the episode's end and its reset step
    changed = any_script.compute_gae(*map(torch.from_numpy, (later_rewards, values, terms, truncs)), 0.99, 0.95)
    assert torch.equal(base[: t + 1, n], changed[: t + 1, n])


@pytest.mark.parametrize(
    "advantage, ratio, gradient_is_zero",
    [
        (1.0, 1.05, False),  # A > 0, inside the band
        (1.0, 1.5, True),  # A > 0, above: clipped, no incentive to grow further
        (1.0, 0.5, False),  # A > 0, below: the unclipped term is the minimum, pushes r back up
        (-1.0, 0.95, False),  # A < 0, inside
        (-1.0, 1.5, False),  # A < 0, above: the unclipped term is the minimum, pushes r back down
        (-1.0, 0.5, True),  # A < 0, below: clipped
    ],
)
def test_clipped_objective_six_cases(script, advantage, ratio, gradient_is_zero):
    logratio = torch.tensor([np.log(ratio)], requires_grad=True)
    adv = torch.tensor([advantage])
    loss = script.clipped_policy_loss(logratio, adv, 0.2)
    expected = -min(ratio * advantage, float(np.clip(ratio, 0.8, 1.2)) * advantage)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    if gradient_is_zero:
        assert logratio.grad.item() == 0.0
    else:  # d(-A r)/d log r = -A r
        assert logratio.grad.item() == pytest.approx(-advantage * ratio, rel=1e-6)


def test_value_loss_clipping(script):
    old = torch.tensor([0.0, 0.0, 0.0])
    new = torch.tensor([1.0, 1.0, 0.1], requires_grad=True)
    ret = torch.tensor([2.0, 0.0, 2.0])
    loss = script.value_loss(new, old, ret, 0.2, clip_vloss=True)
    # per sample: max((new-ret)^2, (old + clip(new-old, -.2, .2) - ret)^2)
    per_sample = [max(1.0, 1.8**2), max(1.0, 0.2**2), max(1.9**2, 1.9**2)]
    assert loss.item() == pytest.approx(0.5 * np.mean(per_sample), rel=1e-6)
    loss.backward()
    # sample 0: the clipped term wins -> no gradient; sample 1: unclipped -> (new-ret)/3; sample 2: inside the band
    assert new.grad.tolist() == pytest.approx([0.0, 1.0 / 3, -1.9 / 3], rel=1e-6)
    unclipped = script.value_loss(new.detach(), old, ret, 0.2, clip_vloss=False)
    assert unclipped.item() == pytest.approx(0.5 * np.mean([1.0, 1.0, 1.9**2]), rel=1e-6)


def test_approx_kl_estimates_the_true_kl(script):
    """mean((r-1) - log r) over actions sampled from the old policy estimates KL(old || new); it is >= 0
    for every sample and 0 when the policies agree."""
    torch.manual_seed(0)
    old_logits, new_logits = torch.tensor([0.2, -0.4, 1.0]), torch.tensor([0.5, -0.1, 0.6])
    old, new = torch.distributions.Categorical(logits=old_logits), torch.distributions.Categorical(logits=new_logits)
    actions = old.sample((200_000,))
    logratio = new.log_prob(actions) - old.log_prob(actions)
    true_kl = torch.distributions.kl_divergence(old, new).item()
    assert script.approx_kl(logratio).item() == pytest.approx(true_kl, rel=0.05)
    assert (torch.expm1(logratio) - logratio).min() >= 0
    assert script.approx_kl(torch.zeros(10)).item() == 0.0


def test_logprobs_and_entropy_match_torch_distributions(ppo_discrete):
    logits = torch.randn(7, 4)
    actions = torch.randint(0, 4, (7,))
    logprob, entropy, logp_all = ppo_discrete.logprobs_and_entropy(logits, actions)
    dist = torch.distributions.Categorical(logits=logits)
    assert torch.allclose(logprob, dist.log_prob(actions), atol=1e-6)
    assert torch.allclose(entropy, dist.entropy(), atol=1e-6)
    assert torch.allclose(logp_all.exp().sum(-1), torch.ones(7), atol=1e-6)


@pytest.mark.parametrize("name", ["ppo_discrete", "trpo_baseline", "a2c_baseline"])
def test_gumbel_max_sampling_matches_the_categorical_distribution(name):
    """The rollout samples argmax(logits + G) with G from the script's gumbel_noise (the baselines: the discrete
    Agent's action_noise): the law of Categorical(logits)."""
    torch.manual_seed(0)
    logits, P = torch.tensor([0.3, -1.0, 1.2]), importlib.import_module(name)
    if hasattr(P, "gumbel_noise"):
        gumbel = P.gumbel_noise((200_000, 3), torch.device("cpu"))
    else:
        gumbel = P.Agent(2, 3, continuous=False).action_noise((200_000, 3))
    freq = torch.bincount((logits + gumbel).argmax(-1), minlength=3).float() / 200_000
    assert torch.allclose(freq, logits.softmax(-1), atol=0.005)


def test_categorical_kl_matches_torch_distributions(ppo_discrete):
    old_logits, new_logits = torch.randn(6, 4), torch.randn(6, 4)
    got = ppo_discrete.categorical_kl(old_logits.log_softmax(-1), new_logits.log_softmax(-1))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=old_logits), torch.distributions.Categorical(logits=new_logits)
    )
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(
        ppo_discrete.categorical_kl(old_logits.log_softmax(-1), old_logits.log_softmax(-1)), torch.zeros(6)
    )


def test_gaussian_logprobs_and_entropy_match_torch_distributions(ppo_continuous):
    """Diagonal Gaussian with a state-independent log-std: summed over the action dims."""
    mean, logstd, actions = torch.randn(7, 3), torch.randn(1, 3), torch.randn(7, 3) * 2
    logprob, entropy = ppo_continuous.logprobs_and_entropy(mean, logstd, actions)
    dist = torch.distributions.Normal(mean, logstd.exp())
    assert torch.allclose(logprob, dist.log_prob(actions).sum(-1), atol=1e-5)
    assert torch.allclose(entropy, dist.entropy().sum(-1), atol=1e-5)
    assert logprob.shape == entropy.shape == (7,)


def test_gaussian_kl_matches_torch_distributions(ppo_continuous):
    old_mean, new_mean = torch.randn(6, 2), torch.randn(6, 2)
    old_logstd, new_logstd = torch.randn(6, 2) * 0.5, torch.randn(1, 2) * 0.5
    got = ppo_continuous.gaussian_kl(old_mean, old_logstd, new_mean, new_logstd)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(old_mean, old_logstd.exp()), torch.distributions.Normal(new_mean, new_logstd.exp())
    ).sum(-1)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(ppo_continuous.gaussian_kl(old_mean, old_logstd, old_mean, old_logstd), torch.zeros(6))


def box_agent(P, obs_dim, action_dim, norm_obs):
    """A Box-action agent of script P (the baselines' Agent takes the action type)."""
    if P.__name__ == "ppo_continuous":
        return P.Agent(obs_dim, action_dim, norm_obs=norm_obs)
    return P.Agent(obs_dim, action_dim, continuous=True, norm_obs=norm_obs)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "box"])
def test_baseline_logprobs_entropy_and_kl_match_torch_distributions(baseline, continuous):
    """The baselines' distribution functions on Agent.policy_params' layout: log-probabilities of every action
    (Discrete) or mean and log-std concatenated (Box)."""
    torch.manual_seed(0)
    old_out, new_out = torch.randn(7, 3), torch.randn(7, 3)
    if continuous:
        old_logstd, new_logstd = torch.randn(1, 3) * 0.5, torch.randn(1, 3) * 0.5
        old = torch.cat([old_out, old_logstd.expand(7, 3)], -1)
        new = torch.cat([new_out, new_logstd.expand(7, 3)], -1)
        old_dist = torch.distributions.Independent(torch.distributions.Normal(old_out, old_logstd.exp()), 1)
        new_dist = torch.distributions.Independent(torch.distributions.Normal(new_out, new_logstd.exp()), 1)
    else:
        old, new = old_out.log_softmax(-1), new_out.log_softmax(-1)
        old_dist, new_dist = (torch.distributions.Categorical(logits=x) for x in (old_out, new_out))
    actions = new_dist.sample()
    logprob, entropy = baseline.logprobs_and_entropy(new, actions, continuous)
    assert torch.allclose(logprob, new_dist.log_prob(actions), atol=1e-5)
    assert torch.allclose(entropy, new_dist.entropy(), atol=1e-5)
    if hasattr(baseline, "policy_kl"):  # TRPO's trust region
        expected = torch.distributions.kl_divergence(old_dist, new_dist)
        assert torch.allclose(baseline.policy_kl(old, new, continuous), expected, atol=1e-5)
        assert torch.allclose(baseline.policy_kl(old, old, continuous), torch.zeros(7), atol=1e-6)


class ScriptedRewards(gym.vector.VectorEnv):
    """A vector env that replays given rewards and termination/truncation flags (next-step autoreset)."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, rewards, terms, truncs):
        self.num_envs = rewards.shape[1]
        self.data, self.t = (rewards, terms.astype(bool), truncs.astype(bool)), 0
        self.single_observation_space = self.single_action_space = gym.spaces.Box(-1, 1, (1,))
        self.observation_space = self.action_space = gym.vector.utils.batch_space(
            self.single_observation_space, self.num_envs
        )

    def reset(self, **kwargs):
        return np.zeros((self.num_envs, 1)), {}

    def step(self, actions):
        self.t += 1
        return (np.zeros((self.num_envs, 1)), *(x[self.t - 1].copy() for x in self.data), {})


def test_reward_scaling_equals_gymnasium_normalize_reward_then_clip(normalising_script):
    """scale_rewards, called once per rollout of 50 steps with its state carried over, gives what CleanRL's
    wrappers give step by step: gymnasium's NormalizeReward (gamma 0.99) then a clip to [-10, 10]."""
    rewards, _, terms, truncs, is_reset = random_rollout(200, 3, seed=0, p_end=0.03)
    rewards = rewards * 5 + 2  # a non-zero mean return
    rewards[120, :] = 1000.0  # an outlier that the clip cuts
    rewards[is_reset] = 0.0
    is_reset[0, 0] = False  # the wrapper's first step is no reset step
    env = gym.wrappers.vector.NormalizeReward(ScriptedRewards(rewards, terms, truncs), gamma=0.99)
    env.reset()
    expected = np.stack([np.clip(env.step(None)[1], -10, 10) for _ in range(200)])

    return_rms, discounted_return = RunningMeanStd(shape=()), np.zeros(3)
    got = np.concatenate(
        [
            normalising_script.scale_rewards(
                rewards[t : t + 50], is_reset[t : t + 50], terms[t : t + 50], return_rms, discounted_return, 0.99
            )
            for t in range(0, 200, 50)
        ]
    )
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected).max() == 10.0  # the clip acted
    assert return_rms.count == pytest.approx(env.return_rms.count)
    assert return_rms.mean == pytest.approx(env.return_rms.mean, rel=1e-6)
    assert return_rms.var == pytest.approx(env.return_rms.var, rel=1e-6)
    np.testing.assert_allclose(discounted_return, env.accumulated_reward, rtol=1e-6)


def test_reward_scaling_reset_at_episode_end_equals_vecnormalize(normalising_script):
    """With reset_at_episode_end, scale_rewards is VecNormalize's reward scaling (OpenAI baselines, SB3) written
    out step by step on the transitions (reset steps are none): ret = ret * gamma + r, the statistics take in ret,
    r / sqrt(var + 1e-8) clipped to [-10, 10], then ret = 0 for every env whose episode ended (terminated or
    truncated). With only time limits ending episodes, it differs from the terminated-only recurrence."""
    rewards, _, terms, truncs, is_reset = random_rollout(200, 3, seed=1, p_end=0.03)
    rewards = rewards * 5 + 2
    rewards[is_reset] = 0.0
    rms, ret = RunningMeanStd(shape=()), np.zeros(3)
    expected = np.zeros_like(rewards)
    for t in range(200):
        active = ~is_reset[t]
        ret[active] = ret[active] * 0.99 + rewards[t, active]
        if active.any():
            rms.update(ret[active])
        expected[t] = np.where(active, np.clip(rewards[t] / np.sqrt(rms.var + 1e-8), -10, 10), 0.0)
        ret[(terms[t] + truncs[t]) > 0] = 0.0

    return_rms, discounted_return = RunningMeanStd(shape=()), np.zeros(3)
    got = np.concatenate(
        [
            normalising_script.scale_rewards(
                *(x[t : t + 50] for x in (rewards, is_reset, terms)), return_rms, discounted_return, 0.99, True
            )
            for t in range(0, 200, 50)
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert return_rms.var == pytest.approx(rms.var, rel=1e-6) and return_rms.count == pytest.approx(rms.count)
    other = normalising_script.scale_rewards(rewards, is_reset, terms, RunningMeanStd(shape=()), np.zeros(3), 0.99)
    assert truncs.sum() > 3 and not np.allclose(other, got)


def test_norm_reward_reset_flag_reaches_the_scaling(normalising_script, monkeypatch):
    P = normalising_script
    seen, real = [], P.scale_rewards
    monkeypatch.setattr(P, "scale_rewards", lambda *a, **k: (seen.append(k["reset_at_episode_end"]), real(*a, **k))[1])
    box = dict(env_id="InvertedPendulum-v5")
    P.main(tiny(P, **box, total_timesteps=32))
    P.main(tiny(P, **box, total_timesteps=32, norm_reward_reset="episode-end"))
    assert seen == [False, True]


def test_observation_normalisation_equals_gymnasium_normalize_observation_then_clip(normalising_script):
    """Agent.normalize_obs(update=True) is gymnasium's NormalizeObservation followed by CleanRL's clip to
    [-10, 10]; with update=False the statistics stay as they are."""
    rng = np.random.default_rng(0)
    batches = rng.normal(3.0, 2.0, size=(40, 2, 5))
    batches[5, 0, 0] = 500.0  # an outlier, clipped to 10
    agent = box_agent(normalising_script, 5, 2, norm_obs=True)
    reference = RunningMeanStd(shape=(5,))
    for obs in batches:
        got = agent.normalize_obs(obs, update=True)
        reference.update(obs)
        expected = np.clip((obs - reference.mean) / np.sqrt(reference.var + 1e-8), -10, 10)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert got.dtype == np.float32
    frozen = agent.get_extra_state()
    agent.normalize_obs(rng.normal(size=(2, 5)) * 100, update=False)
    assert all(torch.equal(frozen[k], agent.get_extra_state()[k]) for k in frozen)
    assert box_agent(normalising_script, 5, 2, norm_obs=False).normalize_obs(batches[5], update=True).tolist() == (
        batches[5].astype(np.float32).tolist()
    )


def test_normalize_advantages(any_script):
    adv = torch.tensor([1.0, 2.0, 3.0, 10.0])
    out = any_script.normalize_advantages(adv)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out.std().item() == pytest.approx(1.0, rel=1e-6)


def test_annealed_lr_is_linear_from_lr_to_lr_over_n(any_script):
    n, lr = 10, 2.5e-4
    lrs = [any_script.annealed_lr(i, n, lr) for i in range(1, n + 1)]
    assert lrs[0] == lr and lrs[-1] == pytest.approx(lr / n)
    assert np.allclose(np.diff(lrs), -lr / n)


@pytest.mark.parametrize(
    "kl, expected_beta", [(0.001, 0.5), (0.0066, 0.5), (0.007, 1.0), (0.01, 1.0), (0.015, 1.0), (0.016, 2.0)]
)
def test_kl_penalty_beta_adaptation(script, kl, expected_beta):
    """PPO paper, section 4: d < d_targ/1.5 -> beta/2; d > 1.5 d_targ -> 2 beta (d_targ = 0.01)."""
    assert script.adapt_kl_beta(1.0, kl, 0.01) == expected_beta


def test_kl_penalty_loss(script):
    logratio = torch.tensor([0.1, -0.2], requires_grad=True)
    adv = torch.tensor([1.0, 2.0])
    kl = torch.tensor([0.05, 0.01])
    loss = script.kl_penalty_policy_loss(logratio, adv, kl, 3.0)
    expected = np.mean([-(1.0 * np.exp(0.1) - 3.0 * 0.05), -(2.0 * np.exp(-0.2) - 3.0 * 0.01)])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
