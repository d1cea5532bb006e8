"""Exact checks of what one update, one rollout or one evaluation computes, against hand computations: each breaks
when one line of the algorithm does (a sign, a normalisation, a clip, a flag not applied)."""

import copy

import numpy as np
import pytest
import torch
from conftest import UPDATE_FUNCTIONS, tiny
from test_scripts import rollout_batch


def reference_ppo_update(P, agent, optimizer, batch, args):
    """PPO's update phase written from the paper and CleanRL with torch.distributions: `update_epochs` passes of
    `num_minibatches` minibatches (the same torch.randperm per epoch as the script), advantages normalised per
    minibatch, clipped surrogate, (clipped) value loss, entropy bonus, global-norm clip, optimizer step.
    Returns the mean (policy loss, value loss, entropy) over the minibatches."""
    losses = []
    for _ in range(args.update_epochs):
        perm = torch.randperm(len(batch["obs"]))
        for idx in perm.tensor_split(args.num_minibatches):
            obs, actions = batch["obs"][idx], batch["actions"][idx]
            if P.__name__ == "ppo_discrete":
                dist = torch.distributions.Categorical(logits=agent.actor(obs))
                newlogprob, entropy = dist.log_prob(actions), dist.entropy()
            else:
                dist = torch.distributions.Normal(agent.actor_mean(obs), agent.actor_logstd.exp())
                newlogprob, entropy = dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)
            ratio = (newlogprob - batch["logprobs"][idx]).exp()
            adv = batch["advantages"][idx]
            if args.norm_adv:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
            newvalue, old, returns = agent.critic(obs).squeeze(-1), batch["values"][idx], batch["returns"][idx]
            if args.clip_vloss:
                clipped = old + (newvalue - old).clamp(-args.clip_coef, args.clip_coef)
                v_loss = 0.5 * torch.max((newvalue - returns) ** 2, (clipped - returns) ** 2).mean()
            else:
                v_loss = 0.5 * ((newvalue - returns) ** 2).mean()
            loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
            losses.append([pg_loss.item(), v_loss.item(), entropy.mean().item()])
    return np.mean(losses, axis=0)


@pytest.mark.parametrize("norm_adv", [True, False])
@pytest.mark.parametrize("clip_vloss", [True, False])
def test_ppo_update_equals_the_hand_computation(script, norm_adv, clip_vloss):
    """Two epochs of two minibatches on a fixed batch, with every coefficient away from its default and old values
    0.5 off the current ones (so value clipping binds): the script's parameters and logged losses equal the
    reference's. Breaks if advantages are not normalised, or normalised over the whole batch; if the entropy
    bonus's sign flips; if value clipping is skipped; if any coefficient is ignored."""
    P = script
    torch.manual_seed(0)
    agent = P.Agent(4, 2) if P.__name__ == "ppo_discrete" else P.Agent(4, 2, False)
    batch = rollout_batch(P, agent, n=256)
    batch["values"] = batch["values"] + 0.5 * torch.randn(256, generator=torch.Generator().manual_seed(1))
    batch["advantages"] = 3.0 * batch["advantages"] + 1.0  # far from normalised
    args = P.Args(num_envs=4, num_steps=64, num_minibatches=2, update_epochs=2, norm_adv=norm_adv)
    args.clip_vloss, args.clip_coef, args.ent_coef, args.vf_coef, args.max_grad_norm = clip_vloss, 0.05, 0.1, 0.7, 0.3
    reference = copy.deepcopy(agent)
    optimizer = P.make_optimizer(agent, 0.01)
    torch.manual_seed(7)
    stats = P.ppo_update(agent, optimizer, batch, args, kl_beta=1.0)
    torch.manual_seed(7)
    expected = reference_ppo_update(
        P, reference, torch.optim.Adam(reference.parameters(), lr=0.01, eps=1e-5), batch, args
    )
    for (name, p), q in zip(agent.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    got = [stats["policy_loss"], stats["value_loss"], stats["entropy"]]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert stats["clipfrac"] > 0  # the clip bound: the later minibatches moved the ratio past 1 +- 0.05


def test_evaluation_acts_on_the_saved_normalisation_statistics(ppo_continuous):
    """The test env's observation is 0.5 everywhere; with saved statistics mean 0.25 and variance 4 the actor must
    see (0.5 - 0.25) / 2 = 0.125, frozen (evaluation does not update the statistics)."""
    P = ppo_continuous
    agent = P.Agent(3, 2, True)
    agent.obs_rms.mean, agent.obs_rms.var, agent.obs_rms.count = np.full(3, 0.25), np.full(3, 4.0), 1e6
    seen = []
    agent.actor_mean.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    args = tiny(P, env_id="tests/ConstantRewardBox-v0", num_envs=2)
    P.evaluate(agent, args, 2, greedy=True, device=torch.device("cpu"))
    observed = torch.cat(seen)
    torch.testing.assert_close(observed, torch.full_like(observed, 0.125), rtol=1e-6, atol=1e-7)
    assert agent.obs_rms.count == 1e6


class Captured(Exception):
    """Raised from a patched compute_gae to stop a run once its first rollout's arguments are captured."""


def capture_first_gae(P, monkeypatch):
    """Replace compute_gae so that the run stops at its first call; returns the dict its arguments land in."""
    captured = {}

    def gae(rewards, values, terminations, truncations, gamma, gae_lambda):
        captured.update(values=values, terminations=terminations, truncations=truncations, gamma=gamma)
        captured["gae_lambda"] = gae_lambda
        raise Captured

    monkeypatch.setattr(P, "compute_gae", gae)
    return captured


def test_truncated_step_bootstraps_from_the_final_observation(any_script, monkeypatch):
    """The StepCount env's observation is the step within the episode (0 after a reset, 5 at the 5-step time
    limit); with V(s) patched to read it, the value after every truncated step must be 5 (the final observation),
    not 0 (the reset observation that next-step autoreset returns one step later)."""
    P = any_script
    box = P.__name__ == "ppo_continuous"  # the others run the Discrete test env
    monkeypatch.setattr(P.Agent, "get_value", lambda self, x: x[..., 0])
    captured = capture_first_gae(P, monkeypatch)
    args = tiny(P, env_id="tests/StepCountBox-v0" if box else "tests/StepCount-v0")
    if hasattr(args, "norm_obs"):
        args.norm_obs = False
    with pytest.raises(Captured):
        P.main(args)
    values, truncations = captured["values"], captured["truncations"].bool()
    assert truncations.sum() >= 4 and captured["terminations"].sum() == 0
    assert (values[1:][truncations] == 5).all()
    assert values.min() == 0 and values.max() == 5


def test_gamma_and_gae_lambda_reach_the_advantages(any_script, monkeypatch):
    P = any_script
    captured = capture_first_gae(P, monkeypatch)
    with pytest.raises(Captured):
        P.main(tiny(P, gamma=0.8, gae_lambda=0.7))
    assert (captured["gamma"], captured["gae_lambda"]) == (0.8, 0.7)


# --- every setting a user can change reaches what it sets --------------------------------------------------------


def test_the_optimizer_steps_at_the_logged_learning_rate(any_script, monkeypatch):
    """The annealed rate is not only logged: the optimizer holds it when each update phase runs."""
    P = any_script
    name, seen = UPDATE_FUNCTIONS[P.__name__], []
    real = getattr(P, name)
    monkeypatch.setattr(
        P,
        name,
        lambda agent, optimizer, *a, **k: (
            seen.append(float(optimizer.param_groups[0]["lr"])),
            real(agent, optimizer, *a, **k),
        )[1],
    )
    result = P.main(tiny(P, learning_rate=1e-3, anneal_lr=True))
    expected = pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])  # the optimizer holds the rate as a float32 tensor
    assert [h["charts/learning_rate"] for h in result["history"]] == expected and seen == expected


def test_a2c_rmsprop_takes_its_flags(a2c_baseline, monkeypatch):
    P, made = a2c_baseline, []
    real = P.torch.optim.RMSprop
    monkeypatch.setattr(P.torch.optim, "RMSprop", lambda params, **kw: (made.append(kw), real(params, **kw))[1])
    P.main(tiny(P, rms_prop_alpha=0.9, rms_prop_eps=1e-3, learning_rate=1e-3))
    assert made == [dict(lr=1e-3, alpha=0.9, eps=1e-3)]


def test_trpo_flags_reach_cg_fisher_product_and_line_search(trpo_baseline, monkeypatch):
    P, seen = trpo_baseline, {}
    for name in ("conjugate_gradient", "fisher_vector_product", "line_search"):
        real = getattr(P, name)
        monkeypatch.setattr(
            P, name, lambda *a, _real=real, _name=name, **k: (seen.setdefault(_name, a), _real(*a, **k))[1]
        )
    P.main(tiny(P, cg_iters=7, cg_damping=0.03, max_kl=0.02, backtrack_coef=0.6, backtrack_iters=4))
    assert seen["conjugate_gradient"][2] == 7 and seen["fisher_vector_product"][2] == 0.03
    assert seen["line_search"][4:] == (0.02, 0.6, 4)


def test_torch_threads_is_applied(ppo_discrete):
    before = torch.get_num_threads()
    try:
        ppo_discrete.main(tiny(ppo_discrete, torch_threads=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("norm_obs", [True, False])
def test_norm_obs_flag_decides_whether_observations_are_normalised(normalising_script, norm_obs):
    """With --norm-obs the agent's statistics take in every observation (InvertedPendulum, 2 envs x 64 steps);
    without, they are never touched and the agent acts on raw observations."""
    P = normalising_script
    result = P.main(tiny(P, env_id="InvertedPendulum-v5", norm_obs=norm_obs))
    agent = result["agent"]
    raw = np.array([[0.5, -0.2, 0.1, 0.3]])
    if norm_obs:
        assert agent.obs_rms.count > 128 and not np.allclose(agent.normalize_obs(raw, update=False), raw)
    else:
        assert agent.obs_rms.count < 1 and np.allclose(agent.normalize_obs(raw, update=False), raw)
