"""The baselines' own maths and behaviour: TRPO's conjugate gradient, Fisher-vector product and line search;
A2C's update; both action types end to end (Box actions here, Discrete in test_scripts.py)."""

import glob

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import TEST_ENVS, interrupt_update, learning, tiny
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def policy_batch(P, continuous, n=64, seed=0, hidden=None):
    """An agent on 3-d observations with 2 actions (its actor shrunk to one hidden layer of `hidden` units if
    given) and a batch as the rollout builds it."""
    torch.manual_seed(seed)
    agent = P.Agent(3, 2, continuous)
    if hidden:
        agent.actor = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 2))
    obs = torch.randn(n, 3)
    with torch.no_grad():
        params = agent.policy_params(obs)
        if continuous:
            actions = params[:, :2] + torch.randn(n, 2)
        else:
            actions = torch.distributions.Categorical(logits=params).sample()
        logprobs, _ = P.logprobs_and_entropy(params, actions, continuous)
        values = agent.get_value(obs)
    advantages = torch.randn(n)
    batch = dict(obs=obs, actions=actions, logprobs=logprobs, policy_params=params, values=values)
    batch.update(advantages=advantages, returns=advantages + values)
    return agent, batch


# --- TRPO ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conjugate_gradient_solves_a_random_spd_system(trpo_baseline, seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(20, 20))
    a = m @ m.T + 0.5 * np.eye(20)
    b = rng.normal(size=20)
    A = torch.tensor(a)
    x = trpo_baseline.conjugate_gradient(lambda v: A @ v, torch.tensor(b), iters=60)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    # fewer iterations than the dimension: an approximation that already reduces the residual
    x5 = trpo_baseline.conjugate_gradient(lambda v: A @ v, torch.tensor(b), iters=5).numpy()
    assert np.linalg.norm(a @ x5 - b) < np.linalg.norm(b)


def kl_hessian(P, agent, batch, continuous):
    """The policy parameters as one vector, and the explicit Hessian of the mean KL(pi_old || pi) with respect to
    it at the agent's current parameters (torch.autograd.functional.hessian)."""
    params = agent.policy_parameters()
    name_of = {id(p): n for n, p in agent.named_parameters()}
    names, shapes = [name_of[id(p)] for p in params], [p.shape for p in params]

    def mean_kl(flat):
        chunks = torch.split(flat, [s.numel() for s in shapes])
        swapped = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        new = torch.func.functional_call(agent, swapped, (batch["obs"],), strict=False)
        return P.policy_kl(batch["policy_params"], new, continuous).mean()

    agent.forward = agent.policy_params  # functional_call calls forward
    flat = torch.nn.utils.parameters_to_vector(params).detach()
    return flat, torch.autograd.functional.hessian(mean_kl, flat)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "box"])
def test_fisher_vector_product_is_the_hessian_of_the_kl(trpo_baseline, continuous):
    """(H + damping I) v by double backprop equals the explicit Hessian of the mean KL (torch.autograd.functional.
    hessian over the flattened policy parameters) times v, at and away from the old policy."""
    P = trpo_baseline
    agent, batch = policy_batch(P, continuous, n=16, hidden=5)
    params = agent.policy_parameters()
    with torch.no_grad():  # move away from the old policy, where the KL's Hessian is not just the Fisher matrix
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    flat, hessian = kl_hessian(P, agent, batch, continuous)
    kl = P.policy_kl(batch["policy_params"], agent.policy_params(batch["obs"]), continuous).mean()
    fvp = P.fisher_vector_product(kl, params, damping=0.1)
    for seed in range(3):
        v = torch.randn(flat.shape, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(fvp(v), hessian @ v + 0.1 * v, rtol=1e-4, atol=1e-6)


def test_line_search_accepts_only_within_the_trust_region_and_improving(trpo_baseline):
    """Tries shrink by backtrack_coef; a candidate over max_kl is refused however much it improves, one that
    does not improve is refused however small its KL."""
    old, step = torch.zeros(2), torch.ones(2)
    results = iter([(5.0, 0.5), (4.0, 0.011), (-1.0, 0.001), (0.3, 0.01), (9.0, 0.0)])
    tried = []

    def evaluate(params):
        tried.append(params[0].item())
        return next(results)

    params, tries, accepted, surrogate, kl = trpo_baseline.line_search(evaluate, old, step, 0.0, 0.01, 0.5, 10)
    assert accepted and tries == 4 and (surrogate, kl) == (0.3, 0.01)
    assert tried == [1.0, 0.5, 0.25, 0.125] and torch.equal(params, old + 0.125 * step)


def test_line_search_keeps_the_old_parameters_when_every_try_fails(trpo_baseline):
    old = torch.tensor([1.0, 2.0])
    params, tries, accepted, surrogate, kl = trpo_baseline.line_search(
        lambda p: (1.0, 0.02), old, torch.ones(2), 0.0, 0.01, 0.8, 10
    )
    assert not accepted and tries == 10 and torch.equal(params, old) and (surrogate, kl) == (0.0, 0.0)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "box"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trpo_step_stays_in_the_trust_region_and_improves(trpo_baseline, continuous, seed):
    P = trpo_baseline
    agent, batch = policy_batch(P, continuous, n=256, seed=seed)
    args = P.Args(update_epochs=1, num_minibatches=4)
    optimizer = torch.optim.Adam(agent.critic.parameters(), lr=1e-3)
    stats = P.trpo_update(agent, optimizer, batch, args)
    with torch.no_grad():
        new = agent.policy_params(batch["obs"])
        kl = P.policy_kl(batch["policy_params"], new, continuous).mean().item()
    assert stats["line_search_failed"] == 0.0
    assert 0 < kl <= args.max_kl and kl == pytest.approx(stats["kl"], rel=1e-4)
    assert stats["surrogate_improvement"] > 0 and stats["step_size"] > 0


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "box"])
def test_trpo_full_step_is_the_natural_gradient_step_to_the_trust_region_edge(trpo_baseline, continuous):
    """With enough CG iterations the accepted full step is sqrt(2 max_kl / s'(H + dI)s) s with s = (H + dI)^-1 g,
    solved here with the explicit Hessian H of the KL at the old policy and g the surrogate's gradient (advantages
    normalised); its KL is what the damped quadratic model predicts. A plain gradient step points elsewhere."""
    P = trpo_baseline
    agent, batch = policy_batch(P, continuous, n=64, hidden=5)
    flat, hessian = kl_hessian(P, agent, batch, continuous)
    params = agent.policy_parameters()
    advantages = P.normalize_advantages(batch["advantages"])
    logprob, _ = P.logprobs_and_entropy(agent.policy_params(batch["obs"]), batch["actions"], continuous)
    surrogate = ((logprob - batch["logprobs"]).exp() * advantages).mean()
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(surrogate, params)]).double()
    damped = hessian.double() + 0.1 * torch.eye(len(flat), dtype=torch.float64)
    s = torch.linalg.solve(damped, g)
    expected = (torch.sqrt(2 * 0.01 / (s @ damped @ s)) * s).float()
    args = P.Args(update_epochs=1, num_minibatches=4, cg_iters=4 * len(flat), max_kl=0.01, cg_damping=0.1)
    stats = P.trpo_update(agent, torch.optim.Adam(agent.critic.parameters()), batch, args)
    assert stats["line_search_steps"] == 1  # the full step was taken
    step = torch.nn.utils.parameters_to_vector(params).detach() - flat
    torch.testing.assert_close(step, expected, rtol=2e-3, atol=2e-5)
    # the KL the damped quadratic model predicts for that step: max_kl * s'Hs / s'(H + dI)s
    assert stats["kl"] == pytest.approx(float(0.01 * (s @ hessian.double() @ s) / (s @ damped @ s)), rel=0.1)


def test_trpo_step_that_cannot_improve_leaves_the_policy_bit_for_bit(trpo_baseline):
    """Zero advantages: no direction improves the surrogate, every try fails, the policy is restored."""
    P = trpo_baseline
    agent, batch = policy_batch(P, continuous=True)
    batch["advantages"] = torch.zeros_like(batch["advantages"])
    before = [p.detach().clone() for p in agent.policy_parameters()]
    args = P.Args(update_epochs=1, num_minibatches=4, norm_adv=False)
    stats = P.trpo_update(agent, torch.optim.Adam(agent.critic.parameters()), batch, args)
    assert stats["line_search_failed"] == 1.0 and stats["step_size"] == 0.0 and stats["kl"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, agent.policy_parameters()))


def test_trpo_critic_trains_on_every_transition_per_epoch(trpo_baseline, monkeypatch):
    P = trpo_baseline
    agent, batch = policy_batch(P, continuous=False, n=253)
    seen = []
    real = agent.get_value
    monkeypatch.setattr(agent, "get_value", lambda x: (seen.append(len(x)), real(x))[1])
    args = P.Args(update_epochs=3, num_minibatches=4)
    P.trpo_update(agent, torch.optim.Adam(agent.critic.parameters()), batch, args)
    assert len(seen) == 12 and sum(seen) == 3 * 253 and max(seen) - min(seen) <= 1


# --- A2C -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "box"])
def test_a2c_update_is_one_hand_computed_rmsprop_step(a2c_baseline, continuous):
    """The loss written out with torch.distributions, its gradient clipped to max_grad_norm by hand, and one
    RMSprop step from zero state (v = (1 - alpha) g^2; p -= lr g / (sqrt(v) + eps)) give a2c_update's result."""
    P = a2c_baseline
    agent, batch = policy_batch(P, continuous, n=10)
    args = P.Args(ent_coef=0.01, max_grad_norm=0.5, learning_rate=7e-4)
    expected = [p.detach().clone() for p in agent.parameters()]

    ref = P.Agent(3, 2, continuous)
    ref.load_state_dict(agent.state_dict())
    out = ref.actor(batch["obs"])
    if continuous:
        dist = torch.distributions.Normal(out, ref.actor_logstd.exp().expand_as(out))
        logprob, entropy = dist.log_prob(batch["actions"]).sum(-1), dist.entropy().sum(-1)
    else:
        dist = torch.distributions.Categorical(logits=out)
        logprob, entropy = dist.log_prob(batch["actions"]), dist.entropy()
    value = ref.critic(batch["obs"]).squeeze(-1)
    loss = (
        -(batch["advantages"] * logprob).mean() - 0.01 * entropy.mean() + 0.5 * ((value - batch["returns"]) ** 2).mean()
    )
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    scale = min(1.0, 0.5 / (norm.item() + 1e-6))
    for p, g in zip(expected, grads):
        g = g * scale
        p -= 7e-4 * g / (torch.sqrt(0.01 * g**2) + 1e-5)

    optimizer = torch.optim.RMSprop(
        [P.flat_parameters(agent)], lr=7e-4, alpha=args.rms_prop_alpha, eps=args.rms_prop_eps
    )
    stats = P.a2c_update(agent, optimizer, batch, args)
    assert stats["value_loss"].item() == pytest.approx(((value - batch["returns"]) ** 2).mean().item(), rel=1e-5)
    for p, q in zip(agent.parameters(), expected):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_a2c_logs_losses_every_log_every_iterations_and_every_episode(a2c_baseline):
    P = a2c_baseline
    result = P.main(tiny(P, env_id="tests/ConstantReward-v0", log_every=3))
    assert len(result["episodes"]) == 20
    acc = EventAccumulator(result["run_dir"], size_guidance={"scalars": 0})
    acc.Reload()
    assert [s.step for s in acc.Scalars("losses/value_loss")] == [96, 128]  # iterations 3 and 4 (the last)
    assert len(acc.Scalars("charts/episodic_return")) == 20
    every = P.main(tiny(P, env_id="tests/ConstantReward-v0"))  # logging does not change learning
    assert learning(result) == learning(every)[2:]


def test_a2c_advantages_are_not_normalised_by_default(a2c_baseline):
    P = a2c_baseline
    agent, batch = policy_batch(P, continuous=False)
    loss_plain = P.a2c_loss(agent, batch, P.Args())[1]
    scaled = dict(batch, advantages=batch["advantages"] * 3.0)
    assert P.a2c_loss(agent, scaled, P.Args())[1].item() == pytest.approx(3.0 * loss_plain.item(), rel=1e-5)
    assert P.a2c_loss(agent, scaled, P.Args(norm_adv=True))[1].item() == pytest.approx(
        P.a2c_loss(agent, batch, P.Args(norm_adv=True))[1].item(), abs=1e-7
    )


# --- both baselines on Box action spaces ---------------------------------------------------------------------


def test_box_run_resumes_exactly_with_its_normalisation_statistics(baseline, monkeypatch, workdir):
    """InvertedPendulum (Box): observation and reward normalisation on; a run killed after its checkpoint at
    iteration 2 of 4 and resumed ends with the uninterrupted run's losses, weights and statistics."""
    P = baseline
    box = TEST_ENVS[P.__name__]["box"]
    full = P.main(tiny(P, env_id=box))
    assert full["agent"].continuous and full["agent"].norm_obs

    def killed():
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        interrupt_update(P, m, 3, killed)  # killed during iteration 3
        P.main(tiny(P, env_id=box, save_model=True, checkpoint_every=2, exp_name="killed"))
    (ckpt,) = glob.glob("runs/*killed*/checkpoint.pt")
    resumed = P.main(P.parse_args(["--resume", ckpt]))
    assert learning(resumed) == learning(full)[2:]
    for (name, p), q in zip(resumed["agent"].state_dict().items(), full["agent"].state_dict().values()):
        if isinstance(p, torch.Tensor):
            assert torch.equal(p, q), name
        else:  # the observation statistics (extra state)
            assert all(torch.equal(p[k], q[k]) for k in p), name


def test_box_actions_are_clipped_for_the_env_and_stored_unclipped(baseline):
    """ConstantRewardBox refuses actions outside [-0.5, 0.5]; with log-std 0 most samples are outside, so the
    run (and its evaluation, sampled and greedy) only finishes if the env gets clipped actions. The log keeps
    the samples themselves."""
    P = baseline
    result = P.main(tiny(P, env_id=TEST_ENVS[P.__name__]["constant_box"], save_model=True, eval_episodes=3))
    assert result["eval"] == {"sampled": 5.0, "greedy": 5.0}
    actions = torch.load(f"{result['run_dir']}/checkpoint.pt", weights_only=True)["actions"]
    assert actions.dtype == torch.float32 and actions.abs().max() > 0.5


def test_discrete_run_does_not_normalise(baseline):
    P = baseline
    result = P.main(tiny(P))
    agent = result["agent"]
    assert not agent.continuous and not agent.norm_obs and agent.obs_rms.count == pytest.approx(1e-4)
    obs = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(agent.normalize_obs(obs, update=True), obs.astype(np.float32))


def test_wrong_action_space_names_the_flag(baseline, monkeypatch, workdir):
    P = baseline
    monkeypatch.setattr(P, "env_spaces", lambda *a: (P.gym.spaces.Box(-1, 1, (3,)), P.gym.spaces.MultiDiscrete([2, 3])))
    with pytest.raises(P.UsageError, match="--env-id CartPole-v1: action space MultiDiscrete.* is neither"):
        P.main(tiny(P))


def test_network_layout_follows_cleanrl(baseline):
    agent = baseline.Agent(5, 3, continuous=True)
    linear = [m for m in agent.actor if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linear] == [64, 64, 3] and agent.actor_logstd.shape == (1, 3)
    assert not hasattr(baseline.Agent(5, 3), "actor_logstd")
