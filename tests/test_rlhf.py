"""ppo_rlhf.py: the task (grammar, gold score, parser), the RLHF maths against naive references and their formulas,
the rollout against the update at the same parameters, and a short learning run."""

import copy
import glob
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, learning

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
    _, stats = R.rlhf_loss(agent, mb, args, 0.05)
    assert stats["val/ratio"].item() == pytest.approx(1.0, abs=1e-6)
    assert stats["policy/approxkl_avg"].item() < 1e-10
    assert (batch["values"] == 0).all()
    # the sampling temperature reaches the log-probabilities
    agent.temperature = 1.0
    _, stats = R.rlhf_loss(agent, mb, args, 0.05)
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


def test_a_stopped_run_resumes_exactly_with_the_annealed_rate(workdir, monkeypatch):
    """Killed during iteration 7 of 10 with a checkpoint at 6, then resumed: the rest is the uninterrupted run's,
    learning-rate annealing included."""
    straight = R.main(tiny(total_timesteps=160, anneal_lr=True))
    real_update, calls = R.ppo_update, []

    def killed_at_7(*a):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_update(*a)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(R, "ppo_update", killed_at_7)
        R.main(tiny(total_timesteps=160, anneal_lr=True, save_model=True, checkpoint_every=6))
    (ckpt,) = glob.glob("runs/*/checkpoint.pt")
    resumed = R.main(R.parse_args(["--resume", ckpt]))
    assert learning(resumed) == learning(straight)[6:]
    for p, q in zip(resumed["agent"].parameters(), straight["agent"].parameters()):
        assert torch.equal(p, q)


def test_training_longer_continues_the_decay_from_the_last_rate(workdir):
    """6 annealed iterations, resumed with a larger --total-timesteps: the rate goes on down from the checkpoint's
    last one (3e-4 / 6) to 0 one iteration after the new end; it never jumps back up."""
    first = R.main(tiny(total_timesteps=96, anneal_lr=True, save_model=True, learning_rate=3e-4))
    assert [h["charts/learning_rate"] for h in first["history"]] == pytest.approx(
        [3e-4 * (6 - i) / 6 for i in range(6)]
    )
    resumed = R.main(R.parse_args(["--resume", f"{first['run_dir']}/checkpoint.pt", "--total-timesteps", "160"]))
    last = 3e-4 / 6
    assert [h["charts/learning_rate"] for h in resumed["history"]] == pytest.approx(
        [last * k / 5 for k in (4, 3, 2, 1)]
    )


def reference_rlhf_update(agent, batch, args, kl_coef, lr):
    """The update written from the papers with torch.distributions and torch's own Adam, one row at a time: per
    token, the clipped surrogate (and GRPO's k3 KL to the reference, or the clipped value loss), averaged over all
    valid tokens (token) or per response then over responses (sequence); the minibatch early stop on TRL's approxkl
    before each step. Returns the number of steps taken."""
    optimizer = torch.optim.Adam(agent.parameters(), lr=lr, eps=1e-5)
    steps = 0
    for _ in range(args.update_epochs):
        for idx in torch.randperm(len(batch["mask"])).tensor_split(args.num_minibatches):
            qr, mask = batch["query_responses"][idx], batch["mask"][idx]
            context = qr.shape[1] - mask.shape[1]
            logits = agent.forward_lm(qr)[1][:, context - 1 : -1] / args.temperature
            logprob = torch.distributions.Categorical(logits=logits).log_prob(qr[:, context:])
            if args.advantage == "gae":
                value = agent.get_value(qr, context)
            rows, kls, values, approxkl = [], [], [], []
            for i in range(len(idx)):
                n = int(mask[i].sum())
                logratio = logprob[i, :n] - batch["logprobs"][idx[i], :n]
                ratio, adv = logratio.exp(), batch["advantages"][idx[i], :n]
                clipped = ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                rows.append(torch.max(-adv * ratio, -adv * clipped))
                approxkl.append(0.5 * logratio**2)
                if args.advantage == "grpo":
                    log_r = batch["ref_logprobs"][idx[i], :n] - logprob[i, :n]
                    kls.append(log_r.exp() - 1 - log_r)
                else:
                    v, old, ret = value[i, :n], batch["values"][idx[i], :n], batch["returns"][idx[i], :n]
                    v_clipped = old + (v - old).clamp(-args.vf_clip_coef, args.vf_clip_coef)
                    values.append(torch.max((v - ret) ** 2, (v_clipped - ret) ** 2))

            def agg(terms):
                if args.loss_agg == "token":
                    return torch.cat(terms).mean()
                return torch.stack([t.mean() for t in terms]).mean()

            if args.target_kl is not None and torch.cat(approxkl).mean() > args.target_kl:
                return steps
            loss = agg(rows)
            if args.advantage == "grpo":
                loss = loss + kl_coef * agg(kls)
            else:
                loss = loss + args.vf_coef * 0.5 * torch.cat(values).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
            steps += 1
    return steps


@pytest.mark.parametrize("target_kl", [None, 1e-4])
@pytest.mark.parametrize("loss_agg", ["token", "sequence"])
@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_the_update_equals_the_hand_computation(advantage, loss_agg, target_kl):
    """Two epochs of two minibatches on a fixed batch, every coefficient away from its default and the KL
    coefficient passed in (GRPO's adaptive one) different from --kl-coef: the script's parameters equal those of
    the reference update with torch's Adam. Breaks if the loss takes --kl-coef instead of the adapted coefficient,
    if --loss-agg or --target-kl is ignored, if a clip or coefficient is."""
    torch.manual_seed(0)
    args = tiny(advantage=advantage, loss_agg=loss_agg, target_kl=target_kl, update_epochs=2, clip_coef=0.1)
    args.vf_coef, args.vf_clip_coef, args.max_grad_norm, args.kl_coef = 0.3, 0.05, 0.5, 0.05
    agent, reference = R.Agent(args), R.Agent(args)  # different random models: GRPO's KL term is not 0
    batch, _ = R.rollout(agent, reference, None, args, 0.05, torch.device("cpu"))
    if advantage == "gae":  # old values away from the current ones, so that the value clip binds
        batch["values"] = batch["values"] + 0.5 * torch.randn(batch["values"].shape) * batch["mask"]
    expected = copy.deepcopy(agent)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-2, eps=1e-5, fused=True)  # as main's
    torch.manual_seed(7)
    stats = R.ppo_update(agent, optimizer, batch, args, kl_coef=0.3)
    torch.manual_seed(7)
    steps = reference_rlhf_update(expected, batch, args, kl_coef=0.3, lr=1e-2)
    assert stats["minibatch_updates"] == steps
    assert steps == 4 if target_kl is None else 0 < steps < 4  # the early stop binds
    for (name, p), q in zip(agent.named_parameters(), expected.parameters()):  # float rounding: ~1e-6 after 4 steps
        torch.testing.assert_close(p, q, rtol=1e-5, atol=5e-6, msg=name)


def test_grpo_with_the_adaptive_controller_trains_on_the_adapted_coefficient(workdir, monkeypatch):
    """Each iteration's update gets the coefficient the controller has reached (logged as objective/kl_coef)."""
    real_update, coefs = R.ppo_update, []

    def update(agent, optimizer, batch, args, kl_coef):
        coefs.append(kl_coef)
        return real_update(agent, optimizer, batch, args, kl_coef)

    monkeypatch.setattr(R, "ppo_update", update)
    result = R.main(tiny(advantage="grpo", adaptive_kl=True, kl_horizon=100))
    assert coefs == [h["objective/kl_coef"] for h in result["history"]] and len(set(coefs)) == 4


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(critic="shared"), "--critic shared: --advantage grpo has no critic or per-token rewards"),
        (dict(vf_coef=0.5), "--vf-coef 0.5: --advantage grpo has no critic"),
        (dict(gamma=0.9), "--gamma 0.9: --advantage grpo"),
        (dict(gae_lambda=0.9), "--gae-lambda 0.9: --advantage grpo"),
        (dict(whiten_rewards=True), "--whiten-rewards True: --advantage grpo"),
        (dict(kl_estimator="k1"), "--kl-estimator k1: GRPO's KL term in the loss is k3"),
    ],
)
def test_grpo_refuses_the_flags_it_would_ignore(flags, message):
    with pytest.raises(R.UsageError, match=f"^{re.escape(message)}"):
        R.main(tiny(advantage="grpo", **flags))


def test_the_group_size_needs_grpo():
    with pytest.raises(R.UsageError, match="^--group-size 8 needs --advantage grpo$"):
        R.main(tiny(group_size=8))


def test_grpo_logs_the_k3_it_penalises():
    torch.manual_seed(0)
    args = tiny(advantage="grpo")
    agent, reference = R.Agent(args), R.Agent(args)
    batch, _ = R.rollout(agent, reference, None, args, 0.05, torch.device("cpu"))
    k3 = R.kl_estimate(batch["logprobs"], batch["ref_logprobs"], "k3") * batch["mask"]
    torch.testing.assert_close(batch["kl"], k3)
    expected = torch.zeros_like(batch["rewards"])  # no KL in GRPO's rewards: the score at the last token alone
    expected[torch.arange(len(expected)), batch["mask"].sum(1).long() - 1] = batch["scores"]
    torch.testing.assert_close(batch["rewards"], expected)


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
    assert table.splitlines()[0].endswith(
        "| iterations after the 10th with grammatical < 0.9 | largest sequence KL after the 10th |"
    )
    assert (workdir / "report" / "kl_penalty.png").stat().st_size > 0


# --- --model-name: a transformers model, offline (a tiny random GPT-2 and a word-level tokenizer made here) ---------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A folder with a tiny random GPT2LMHeadModel and a word-level tokenizer of the review language, and in its
    `rm` subfolder a random GPT2ForSequenceClassification (1 label) of the same size."""
    pytest.importorskip("transformers")
    from transformers import GPT2ForSequenceClassification

    from benchmarks.rlhf_speed import make_tiny_model

    path = tmp_path_factory.mktemp("tiny-lm")
    make_tiny_model(str(path), pretrain_steps=0)
    torch.manual_seed(3)
    GPT2ForSequenceClassification.from_pretrained(path, num_labels=1).save_pretrained(path / "rm")
    (path / "rm").joinpath("tokenizer.json").write_bytes((path / "tokenizer.json").read_bytes())
    (path / "rm").joinpath("tokenizer_config.json").write_bytes((path / "tokenizer_config.json").read_bytes())
    return str(path)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_transformers_vocabulary_reads_the_same_words(tiny_lm, offline):
    agent = R.Agent(tiny(model_name=tiny_lm))
    vocab = agent.vocab
    assert (vocab.pad, vocab.eos) == (R.PAD, R.EOS)  # the tokenizer's own, distinct
    review = words("the movie is very good and bad . the plot was dull .")
    row = vocab.encode([review], torch.device("cpu"))[0].tolist()
    assert vocab.words(row) == review + ["<eos>"] and R.grammatical(vocab.words(row))
    prompts = vocab.prompts(5, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert all(vocab.words(p)[0] == "the" and vocab.words(p)[1] in R.NOUNS for p in prompts.tolist())
    # dropout is off: two forwards in training mode agree
    assert all(m.p == 0.0 for m in agent.modules() if isinstance(m, torch.nn.Dropout))
    torch.testing.assert_close(agent.logits(prompts), agent.logits(prompts), rtol=0, atol=0)


def test_a_transformers_forward_masks_left_and_right_pads(tiny_lm, offline):
    """A row's logits do not change when it is padded on the left (positions counted from its first token) or has
    pads after it (TRL's forward)."""
    agent = R.Agent(tiny(model_name=tiny_lm))
    the, movie, is_, good = (R.TOKEN[w] for w in ("the", "movie", "is", "good"))
    alone = agent.forward_lm(torch.tensor([[the, movie, is_, good]]))[1]
    padded = agent.forward_lm(
        torch.tensor([[R.PAD, R.PAD, the, movie, is_, good], [the, movie, is_, good, R.PAD, R.PAD]])
    )[1]
    torch.testing.assert_close(padded[0, 2:], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1, :4], alone[0], atol=1e-5, rtol=1e-5)
    # the model computes what transformers' own does (fast_config's GELU kernel is the same function)
    from transformers import GPT2LMHeadModel

    plain = GPT2LMHeadModel.from_pretrained(tiny_lm).eval()
    assert agent.lm.config.activation_function == "gelu_pytorch_tanh" != plain.config.activation_function
    torch.testing.assert_close(alone, plain(torch.tensor([[the, movie, is_, good]])).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_a_transformers_rollout_has_ratio_1_in_the_first_minibatch(tiny_lm, offline, critic):
    torch.manual_seed(0)
    args = tiny(model_name=tiny_lm, critic=critic)
    agent = R.Agent(args)
    R.pretrain(agent, args, torch.device("cpu"))
    reference = R.copy.deepcopy(agent)
    batch, episodes = R.rollout(agent, reference, None, args, 0.05, torch.device("cpu"))
    assert len(episodes) == args.num_prompts and (batch["values"] == 0).all()
    torch.testing.assert_close(batch["logprobs"], batch["ref_logprobs"], rtol=0, atol=0)
    # the generated tokens are the ones sampled: after the first <eos> only pads, each response's score is gold's
    gold = [R.gold_score(agent.vocab.words(row)) for row in batch["query_responses"].tolist()]
    torch.testing.assert_close(batch["scores"], torch.tensor(gold) - batch["has_eos"].logical_not().float())
    _, stats = R.rlhf_loss(agent, {k: v[:8] for k, v in batch.items()}, args, 0.05)
    assert stats["val/ratio"].item() == pytest.approx(1.0, abs=1e-5)


def test_a_transformers_reward_model_scores_each_rows_last_token(tiny_lm, offline):
    from transformers import GPT2ForSequenceClassification

    args = tiny(model_name=tiny_lm, reward="model", reward_model_name=f"{tiny_lm}/rm")
    vocab = R.Agent(args).vocab
    reward_model = R.RewardModel(args, vocab)
    plain = GPT2ForSequenceClassification.from_pretrained(f"{tiny_lm}/rm", num_labels=1)
    rows = [words("the movie is good . <eos>"), words("the plot was dull and long . <eos>")]
    ids = [[R.TOKEN[w] for w in row] for row in rows]
    batch = torch.tensor([[R.PAD] * (len(ids[1]) - len(ids[0])) + ids[0], ids[1]])  # left-padded
    expected = torch.stack([plain(torch.tensor([row])).logits[0, 0] for row in ids])
    torch.testing.assert_close(reward_model(batch), expected, atol=1e-5, rtol=1e-5)


def test_a_transformers_run_trains_checkpoints_and_resumes_exactly(tiny_lm, offline, workdir, capsys):
    kw = dict(model_name=tiny_lm, reward="model", reward_model_name=f"{tiny_lm}/rm")
    first = R.main(tiny(total_timesteps=32, save_model=True, **kw))
    resumed = R.main(R.parse_args(["--resume", f"{first['run_dir']}/checkpoint.pt", "--total-timesteps", "64"]))
    straight = R.main(tiny(total_timesteps=64, eval_episodes=8, **kw))
    assert resumed["history"][-1]["objective/scores"] == straight["history"][-1]["objective/scores"]
    assert resumed["history"][-1]["loss/value_avg"] == straight["history"][-1]["loss/value_avg"]
    assert "KL to the reference" in capsys.readouterr().out


def test_transformers_flags_are_one_line(tiny_lm, offline, tmp_path):
    with pytest.raises(R.UsageError, match="--reward-model-name needs --reward model and --model-name"):
        R.main(tiny(reward="model", reward_model_name=tiny_lm))
    with pytest.raises(R.UsageError, match="--reward model with --model-name needs --reward-model-name"):
        R.main(tiny(model_name=tiny_lm, reward="model"))
    with pytest.raises(R.UsageError, match=f"--model-name {tmp_path}/none: "):
        R.main(tiny(model_name=f"{tmp_path}/none"))


@pytest.mark.slow
def test_ppo_on_a_transformers_model_raises_the_gold_score(tiny_lm, offline, workdir):
    """The tiny GPT-2 learns as the built-in GPT does: in 15 iterations at --learning-rate 3e-4 (the default 5e-5 is
    chosen for stability over 100 iterations and needs ~40); medians, as a one-iteration excursion is possible."""
    history = R.main(R.Args(model_name=tiny_lm, total_timesteps=64 * 15, learning_rate=3e-4))["history"]
    start = np.mean([h["gold/score"] for h in history[:2]])
    end = np.mean([h["gold/score"] for h in history[-3:]])
    assert start < 0.4 and end > 0.8, (start, end)
    assert np.median([h["objective/kl"] for h in history[-5:]]) < 4.0
    assert np.median([h["gold/grammatical"] for h in history[-5:]]) > 0.9


def test_the_trl_benchmarks_gold_reward_model_is_the_gold_score_of_each_prefix():
    from benchmarks.rlhf_speed import GoldRewardModel

    rows = [words("the movie is good and bad . <eos> <pad>"), words("the plot was fun but very long . <pad>")]
    ids = torch.tensor([[R.TOKEN[w] for w in row] for row in rows])
    model = GoldRewardModel()
    scores = model.score(model.backbone(input_ids=ids).hidden_states[-1])
    for row, ids_row in zip(rows, scores):
        assert ids_row[:, 0].tolist() == pytest.approx([R.gold_score(row[: t + 1]) for t in range(len(row))])


def test_the_docs_tiny_model_recipe_runs_from_any_directory(tmp_path, offline):
    """The docs' recipe: benchmarks/rlhf_speed.py by its path makes the tiny model from another directory, and
    ppo_rlhf.py trains on it there."""
    pytest.importorskip("transformers")
    made = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rlhf_speed.py"), "--make-model", "lm", "--pretrain-steps", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    flags = ["--model-name", "lm", "--total-timesteps", "32", "--num-prompts", "16", "--pretrain-steps", "2"]
    run = subprocess.run(
        [sys.executable, str(ROOT / "ppo_rlhf.py"), *flags], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0 and "finished at global_step=32" in run.stdout, run.stderr[-2000:]


def test_samples_are_logged_once_every_sample_every_iterations(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = R.main(tiny(total_timesteps=96, sample_every=2))  # 6 iterations of 16 prompts
    events = EventAccumulator(result["run_dir"], size_guidance={"tensors": 0})
    events.Reload()
    assert [e.step for e in events.Tensors("samples/text_summary")] == [32, 64, 96]  # iterations 2, 4, 6
