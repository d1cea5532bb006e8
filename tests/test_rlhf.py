"""ppo_rlhf.py: the task (grammar, gold score, parser), the RLHF maths against naive references and their formulas,
the rollout against the update at the same parameters, and a short learning run."""

import random

import numpy as np
import pytest
import torch

import ppo_rlhf as R


def tiny(**kw) -> R.Args:
    defaults = dict(total_timesteps=64, num_prompts=16, pretrain_steps=20, update_epochs=1, num_minibatches=2)
    return R.Args(**{**defaults, **kw})


def words(text: str) -> list[str]:
    return text.split()


# --- the task ------------------------------------------------------------------------------------------------------


def test_grammar_samples_parse_and_the_parser_refuses_what_is_not_a_review():
    rng = random.Random(0)
    for _ in range(500):
        review = R.sample_review(rng)
        assert R.grammatical(review + ["<eos>"]) and len(review) - 2 + 1 <= 16
    assert R.grammatical(words("the movie is very good and bad . the plot was dull . <eos>"))
    for bad in [
        "the movie is good .",  # no <eos>
        "the movie is good <eos>",  # no full stop
        "the movie is very . <eos>",  # no adjective
        "the movie is good and . <eos>",
        "good . good good . . <eos>",  # the collapse the KL penalty prevents
        "the movie is good . the plot is bad . the song is fun . <eos>",  # three sentences
    ]:
        assert not R.grammatical(words(bad)), bad


def test_gold_score_counts_positive_against_negative_adjectives():
    assert R.gold_score(words("the movie is good and very bad . the plot is fun .")) == pytest.approx(1 / 3)
    assert R.gold_score(words("the movie is long .")) == 0.0
    assert R.gold_score(words("the movie is awful but dull .")) == -1.0
    assert R.gold_score(words("the movie is .")) == 0.0  # no adjective


# --- the maths -----------------------------------------------------------------------------------------------------


def test_truncation_after_the_first_eos_and_the_score_on_the_eos_token():
    E, P = R.EOS, R.PAD
    good, dot = R.TOKEN["good"], R.TOKEN["."]
    responses = torch.tensor([[good, dot, E, good, E], [good, good, good, good, good], [E, good, dot, E, good]])
    truncated, mask = R.truncate_after_eos(responses)
    assert truncated.tolist() == [[good, dot, E, P, P], [good] * 5, [E, P, P, P, P]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0]]
    # the rollout puts the score on the last valid token: the <eos>, not the pad after it
    last = mask.sum(1).long() - 1
    assert last.tolist() == [2, 4, 0] and all(truncated[i, j] in (E, good) for i, j in enumerate(last.tolist()))


def test_kl_estimators_match_their_formulas():
    logp = torch.log(torch.tensor([0.5, 0.2, 0.9]))
    ref = torch.log(torch.tensor([0.25, 0.4, 0.9]))
    k1 = R.kl_estimate(logp, ref, "k1")
    k3 = R.kl_estimate(logp, ref, "k3")
    r = ref.exp() / logp.exp()
    torch.testing.assert_close(k1, logp - ref)
    torch.testing.assert_close(k3, (r - 1) - torch.log(r))
    assert (k3 >= 0).all() and k3[2] == 0


def test_adaptive_kl_controller_is_zieglers_update():
    args = R.Args(kl_target=6.0, kl_horizon=10000, num_prompts=64)
    for kl in (0.0, 3.0, 6.0, 6.6, 100.0):
        error = min(max(kl / 6.0 - 1, -0.2), 0.2)
        assert R.adaptive_kl_coef(0.1, kl, args) == pytest.approx(0.1 * (1 + error * 64 / 10000))


def test_masked_whitening_uses_only_the_valid_tokens():
    g = torch.Generator().manual_seed(0)
    x, mask = torch.randn(6, 5, generator=g), (torch.rand(6, 5, generator=g) > 0.3).float()
    valid = x[mask.bool()]
    expected = (valid - valid.mean()) / torch.sqrt(valid.var() + 1e-8)
    out = R.masked_whiten(x, mask)
    torch.testing.assert_close(out[mask.bool()], expected)
    assert (out[~mask.bool()] == 0).all()
    shifted = R.masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(shifted[mask.bool()], expected + valid.mean())


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5)])
def test_token_gae_against_a_naive_loop(gamma, lam):
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    lengths = [6, 3, 1, 5]
    mask = torch.tensor([[1.0] * n + [0.0] * (6 - n) for n in lengths])
    rewards = rewards * mask
    out = R.token_gae(rewards, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        adv = 0.0
        for t in reversed(range(n)):
            next_value = values[i, t + 1].item() if t + 1 < n else 0.0
            adv = rewards[i, t].item() + gamma * next_value - values[i, t].item() + gamma * lam * adv
            assert out[i, t].item() == pytest.approx(adv, abs=1e-5)
        assert (out[i, n:] == 0).all()


def test_grpo_group_advantages_by_hand():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    adv = R.group_advantages(scores, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4), 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected)


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_rollout_log_probabilities_equal_the_updates_at_the_same_parameters(critic):
    """The rollout's log-probabilities (at the temperature) are what the first minibatch of the first epoch
    recomputes: its ratio is 1 to float rounding; the value head starts at 0."""
    torch.manual_seed(0)
    args = tiny(critic=critic, temperature=0.7)
    agent = R.Agent(args)
    R.pretrain(agent, args, torch.device("cpu"))
    reference = R.Agent(args)
    reference.load_state_dict(agent.state_dict())
    batch, episodes = R.rollout(agent, reference, None, args, 0.05, torch.device("cpu"))
    assert len(episodes) == args.num_prompts and torch.equal(batch["logprobs"], batch["ref_logprobs"])
    mb = {k: v[:8] for k, v in batch.items()}
    _, stats = R.rlhf_loss(agent, mb, args)
    assert stats["val/ratio"].item() == pytest.approx(1.0, abs=1e-6)
    assert stats["policy/approxkl_avg"].item() < 1e-10
    assert (batch["values"] == 0).all()
    # the sampling temperature reaches the log-probabilities
    agent.temperature = 1.0
    _, stats = R.rlhf_loss(agent, mb, args)
    assert abs(stats["val/ratio"].item() - 1.0) > 1e-3


def test_the_kl_penalty_is_in_the_rewards_and_the_score_at_the_end():
    torch.manual_seed(0)
    args = tiny()
    agent, reference = R.Agent(args), R.Agent(args)  # different random models: the KL is not 0
    batch, _ = R.rollout(agent, reference, None, args, 0.5, torch.device("cpu"))
    last = batch["mask"].sum(1).long() - 1
    expected = -0.5 * batch["kl"]
    expected[torch.arange(len(last)), last] += batch["scores"]
    torch.testing.assert_close(batch["rewards"], expected)
    no_eos = ~batch["has_eos"]
    gold = torch.tensor([R.gold_score(R.decode(row)) for row in batch["query_responses"].tolist()])
    torch.testing.assert_close(batch["scores"], gold - args.missing_eos_penalty * no_eos.float())


def test_bad_flags_are_one_line():
    with pytest.raises(R.UsageError, match="--group-size 3 must be >= 2 and divide --num-prompts 16"):
        R.main(tiny(advantage="grpo", group_size=3))
    with pytest.raises(R.UsageError, match="--n-head 3 must divide --d-model 64"):
        R.main(tiny(n_head=3))


def test_a_short_run_checkpoints_and_resumes_exactly(workdir):
    first = R.main(tiny(total_timesteps=96, save_model=True))
    resumed = R.main(R.parse_args(["--resume", f"{first['run_dir']}/checkpoint.pt", "--total-timesteps", "160"]))
    straight = R.main(tiny(total_timesteps=160))
    for a, b in zip(resumed["history"][-4:], straight["history"][-4:]):
        assert a["objective/scores"] == b["objective/scores"] and a["loss/policy_avg"] == b["loss/policy_avg"]


@pytest.mark.slow
@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_ppo_raises_the_gold_score_and_keeps_the_kl_bounded(workdir, advantage):
    result = R.main(R.Args(total_timesteps=64 * 40, advantage=advantage, seed=2))
    history = result["history"]
    start = np.mean([h["gold/score"] for h in history[:3]])
    end = np.mean([h["gold/score"] for h in history[-5:]])
    assert start < 0.4 and end > 0.8, (start, end)
    assert np.mean([h["objective/kl"] for h in history[-5:]]) < 4.0
    assert np.mean([h["gold/grammatical"] for h in history[-5:]]) > 0.85


def test_the_rlhf_report_reads_the_runs(workdir):
    from benchmarks import rlhf

    for name in ("ppo_rlhf", "ppo_rlhf_kl0"):
        R.main(tiny(total_timesteps=48, exp_name=name, kl_coef=0.0 if name.endswith("kl0") else 0.05))
    rlhf.main(rlhf.Args(runs="runs", out="report"))
    table = (workdir / "report" / "results.md").read_text()
    assert "| ppo_rlhf | 1 seed |" in table and "| ppo_rlhf_kl0 | 1 seed |" in table
    assert (workdir / "report" / "kl_penalty.png").stat().st_size > 0
