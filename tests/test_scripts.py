"""Every algorithm script end to end (the PPO update phase; for all scripts time limits, reproducibility, resume,
logging, checkpoints, errors)."""

import ast
import glob
import importlib
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ALL_SCRIPTS, ROOT, TEST_ENVS, interrupt_update, learning, tiny
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# The generic tests run on ALL_SCRIPTS (CartPole-sized envs); help and README coverage also on the Atari scripts.
EVERY_SCRIPT = ALL_SCRIPTS + ["ppo_atari", "ppo_lstm"]


def constant_env(P):
    return TEST_ENVS[P.__name__]["constant"]


def value_of(P, agent, obs):
    """V(obs) for raw observations [N, D] as the script computes it (normalised first if the agent does that)."""
    if hasattr(agent, "normalize_obs"):
        obs = agent.normalize_obs(obs, update=False)
    with torch.no_grad():
        return agent.get_value(torch.as_tensor(obs, dtype=torch.float32))


def scalars(run_dir):
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def rollout_batch(P, agent, n=256, seed=0):
    """A batch as the script's rollout builds it, for an agent on 4-d observations."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 4, generator=g)
    batch = dict(obs=obs)
    with torch.no_grad():
        if P.__name__ == "ppo_discrete":
            logits = agent.actor(obs)
            actions = torch.distributions.Categorical(logits=logits).sample()
            logprobs, _, logp_all = P.logprobs_and_entropy(logits, actions)
            batch.update(actions=actions, logprobs=logprobs, logp_all=logp_all)
        else:
            means = agent.actor_mean(obs)
            actions = means + torch.randn(means.shape, generator=g)
            logprobs, _ = P.logprobs_and_entropy(means, agent.actor_logstd, actions)
            logstds = agent.actor_logstd.expand_as(means).clone()
            batch.update(actions=actions, logprobs=logprobs, means=means, logstds=logstds)
        batch["values"] = agent.get_value(obs)
    batch["advantages"] = torch.randn(n, generator=g)
    batch["returns"] = batch["advantages"] + batch["values"]
    return batch


# --- the update phase --------------------------------------------------------------------------------------


def test_kl_early_stop_is_checked_per_minibatch(script):
    """With a KL target that one aggressive step exceeds, the update phase stops at the second minibatch:
    one minibatch step in all, not the 4 that an end-of-epoch check would allow, nor the 16 of no check."""
    P = script
    torch.manual_seed(0)
    args = P.Args(num_envs=4, num_steps=64, num_minibatches=4, update_epochs=4, target_kl=1e-4)
    agent = P.Agent(4, 2)
    optimizer = P.make_optimizer(agent, 0.05)
    before = [p.detach().clone() for p in agent.parameters()]
    stats = P.ppo_update(agent, optimizer, rollout_batch(P, agent), args, kl_beta=1.0)
    assert stats["minibatch_updates"] == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.parameters()))

    args.target_kl = None
    stats = P.ppo_update(agent, optimizer, rollout_batch(P, agent), args, kl_beta=1.0)
    assert stats["minibatch_updates"] == 16


def test_update_uses_every_transition_once_per_epoch(script, monkeypatch):
    """Minibatches partition the (reset-step-free) batch, whatever its size."""
    P = script
    agent = P.Agent(4, 2)
    batch = rollout_batch(P, agent, n=253)
    seen = []
    real = P.logprobs_and_entropy
    monkeypatch.setattr(P, "logprobs_and_entropy", lambda *a: (seen.append(len(a[-1])), real(*a))[1])
    args = P.Args(num_envs=4, num_steps=64, num_minibatches=4, update_epochs=3)
    P.ppo_update(agent, P.make_optimizer(agent, 1e-3), batch, args, 1.0)
    assert len(seen) == 12 and sum(seen) == 3 * 253 and max(seen) - min(seen) <= 1


# --- time limits and reset steps ------------------------------------------------------------------------------


def test_truncation_bootstrap_learns_the_true_value(any_script):
    """ConstantReward: reward 1 forever, cut by a 5-step time limit. With gamma 0.9 the true value is 10.
    Treating the cut as termination would learn about 4.1; learning from the reset steps about 8.3."""
    P = any_script
    args = tiny(
        P,
        env_id=constant_env(P),
        gamma=0.9,
        num_envs=4,
        num_steps=32,
        total_timesteps=40_960,
        learning_rate=3e-3,
        clip_vloss=False,
        anneal_lr=False,
    )
    if hasattr(args, "norm_reward"):
        args.norm_reward = False  # the value in reward units
    result = P.main(args)
    value = value_of(P, result["agent"], np.full((1, 3), 0.5)).item()
    assert value == pytest.approx(10.0, abs=0.5)
    assert {e[2] for e in result["episodes"]} == {5}


def test_every_finished_episode_is_logged(any_script):
    P = any_script
    result = P.main(tiny(P, env_id=constant_env(P)))
    # 128 steps over 2 envs: each env runs 64 steps = 10 episodes of 5 steps plus their 10 reset steps (60 steps)
    assert len(result["episodes"]) == 20
    assert all(r == 5.0 and length == 5 for _, r, length in result["episodes"])


# --- reproducibility and resume ----------------------------------------------------------------------------


def test_same_seed_same_run_and_other_seed_differs(any_script):
    P = any_script
    a, b = P.main(tiny(P)), P.main(tiny(P))
    assert learning(a) == learning(b) and a["episodes"] == b["episodes"]
    c = P.main(tiny(P, seed=2))
    assert learning(c) != learning(a)


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_resume_reproduces_the_uninterrupted_run(any_script, monkeypatch, workdir, backend):
    """A run killed after its checkpoint at iteration 4 of 8 and resumed gives exactly the uninterrupted
    run's losses, episodes and weights (CPU), learning-rate annealing included: replaying the logged
    actions restores the environments' state."""
    P = any_script
    for name in ("full", "crash"):
        (workdir / name).mkdir()
    monkeypatch.chdir(workdir / "full")
    full = P.main(tiny(P, total_timesteps=256, env_backend=backend))

    monkeypatch.chdir(workdir / "crash")

    def killed():
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        interrupt_update(P, m, 5, killed)  # killed during iteration 5
        P.main(tiny(P, total_timesteps=256, save_model=True, checkpoint_every=4, env_backend=backend))
    (ckpt,) = glob.glob("runs/*/checkpoint.pt")
    assert torch.load(ckpt, weights_only=True)["iteration"] == 4

    resumed = P.main(P.parse_args(["--resume", ckpt]))
    assert learning(resumed) == learning(full)[4:]
    assert resumed["episodes"] == full["episodes"]
    for p, q in zip(resumed["agent"].parameters(), full["agent"].parameters()):
        assert torch.equal(p, q)


def test_sigterm_checkpoints_at_the_iteration_end_and_resume_is_exact(any_script, monkeypatch, workdir):
    """A preemption notice (SIGTERM) during iteration 3 of 8: the run finishes iteration 3, checkpoints and
    stops cleanly; resuming gives the uninterrupted run."""
    P = any_script
    full = P.main(tiny(P, total_timesteps=256))
    with monkeypatch.context() as m:
        interrupt_update(P, m, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
        stopped = P.main(tiny(P, total_timesteps=256, save_model=True, eval_episodes=2, exp_name="preempted"))
    assert len(stopped["history"]) == 3 and stopped["eval"] == {}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    resumed = P.main(P.parse_args(["--resume", f"{stopped['run_dir']}/checkpoint.pt", "--eval-episodes", "0"]))
    assert learning(stopped) + learning(resumed) == learning(full)


def test_resume_takes_flags_from_the_checkpoint_and_refuses_other_envs(any_script):
    P = any_script
    P.main(tiny(P, save_model=True, learning_rate=1e-3))
    (ckpt,) = glob.glob("runs/*/checkpoint.pt")
    args = P.parse_args(["--resume", ckpt, "--total-timesteps", "256"])
    assert args.learning_rate == 1e-3 and args.num_envs == 2 and args.total_timesteps == 256
    with pytest.raises(P.UsageError, match="--num-envs 3 differs from the checkpoint's 2"):
        P.main(P.parse_args(["--resume", ckpt, "--num-envs", "3"]))
    # a finished run resumed with nothing left to train only evaluates
    result = P.main(P.parse_args([f"--resume={ckpt}", "--eval-episodes", "2"]))
    assert result["history"] == [] and set(result["eval"]) == {"greedy", "sampled"}


# --- logging -----------------------------------------------------------------------------------------------


def test_tensorboard_has_cleanrl_tags(any_script):
    P = any_script
    result = P.main(tiny(P))
    acc = scalars(result["run_dir"])
    tags = set(acc.Tags()["scalars"])
    expected = {
        "charts/episodic_return",
        "charts/episodic_length",
        "charts/SPS",
        "charts/learning_rate",
        "losses/value_loss",
        "losses/policy_loss",
        "losses/entropy",
        "losses/explained_variance",
    }
    expected |= {
        "ppo_discrete": {"losses/old_approx_kl", "losses/approx_kl", "losses/clipfrac"},
        "ppo_continuous": {"losses/old_approx_kl", "losses/approx_kl", "losses/clipfrac"},
        "trpo_baseline": {
            "losses/old_approx_kl",
            "losses/approx_kl",
            "losses/kl",
            "losses/step_size",
            "losses/line_search_steps",
            "losses/line_search_failed",
            "losses/surrogate_improvement",
        },
        "a2c_baseline": set(),
    }[P.__name__]
    assert expected <= tags
    assert len(acc.Scalars("losses/value_loss")) == 4  # once per iteration
    assert len(acc.Scalars("charts/episodic_return")) == len(result["episodes"])
    assert [s.step for s in acc.Scalars("charts/SPS")] == [32, 64, 96, 128]
    assert "hyperparameters/text_summary" in acc.Tags()["tensors"]


def test_losses_are_averaged_over_minibatches(script, monkeypatch):
    P = script
    seen = []
    real = P.value_loss
    monkeypatch.setattr(P, "value_loss", lambda *a, **k: (lambda v: (seen.append(v.item()), v)[1])(real(*a, **k)))
    result = P.main(tiny(P, total_timesteps=32))
    assert len(seen) == 4
    assert result["history"][0]["losses/value_loss"] == pytest.approx(np.mean(seen), rel=1e-5)


def test_kl_penalty_adapts_beta_by_the_measured_kl(script):
    P = script
    result = P.main(tiny(P, loss_type="kl-penalty", total_timesteps=320, kl_target=0.001, learning_rate=1e-3))
    betas = [h["losses/kl_beta"] for h in result["history"]]
    kls = [h["losses/kl"] for h in result["history"]]
    assert betas[0] == 1.0
    for beta, kl, next_beta in zip(betas, kls, betas[1:]):
        assert next_beta == P.adapt_kl_beta(beta, kl, 0.001)
    assert len(set(betas)) > 1


def test_track_writes_wandb_offline_run_with_videos(any_script, workdir):
    P = any_script
    video_env = TEST_ENVS[P.__name__]["video"]
    result = P.main(
        tiny(P, env_id=video_env, track=True, wandb_project_name="test", capture_video=True, total_timesteps=1024)
    )
    runs = glob.glob(str(workdir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1 and os.path.getsize(runs[0]) > 0
    recorded = glob.glob(f"videos/{result['run_name']}/*.mp4")
    uploaded = glob.glob(str(workdir / "wandb" / "offline-run-*" / "files" / "media" / "videos" / "*.mp4"))
    assert recorded and len(uploaded) == len(recorded)


def test_capture_video_records_env_0(any_script):
    P = any_script
    result = P.main(tiny(P, env_id=TEST_ENVS[P.__name__]["video"], capture_video=True, total_timesteps=1024))
    assert result["episodes"]
    assert glob.glob(f"videos/{result['run_name']}/*.mp4")


# --- evaluation ----------------------------------------------------------------------------------------------


def test_eval_logs_both_modes_and_leaves_training_untouched(any_script):
    P = any_script
    plain = P.main(tiny(P))
    evaluated = P.main(tiny(P, eval_episodes=3))
    assert learning(evaluated) == learning(plain)
    assert set(evaluated["eval"]) == {"greedy", "sampled"}
    acc = scalars(evaluated["run_dir"])
    assert len(acc.Scalars("eval/episodic_return")) == 3
    assert len(acc.Scalars("eval/episodic_return_greedy")) == 3


def test_evaluate_runs_exactly_the_requested_episodes(any_script):
    P = any_script
    args = tiny(P, env_id=constant_env(P), num_envs=4)
    returns = P.evaluate(P.Agent(3, 2), args, 7, greedy=True, device=torch.device("cpu"))
    assert returns.tolist() == [5.0] * 7


# --- checkpoints ---------------------------------------------------------------------------------------------


def test_checkpoint_write_is_atomic(any_script, monkeypatch):
    P = any_script
    P.save_checkpoint("ckpt.pt", {"format": P.CHECKPOINT_FORMAT, "n": 1})

    def crash_mid_write(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    with monkeypatch.context() as m, pytest.raises(P.TrainingError, match="cannot write .*ckpt.pt: disk full"):
        m.setattr(P.torch, "save", crash_mid_write)
        P.save_checkpoint("ckpt.pt", {"format": P.CHECKPOINT_FORMAT, "n": 2})
    assert P.load_checkpoint("ckpt.pt")["n"] == 1
    assert os.listdir(".") == ["ckpt.pt"]


class NotAllowed:
    pass


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"not a checkpoint at all", "cannot be read: the file is corrupt or truncated"),
        ({"agent": {}}, "not a checkpoint of this script \\(SCRIPT\\)"),
        (NotAllowed(), "holds Python objects that no checkpoint contains"),  # never unpickled
    ],
)
def test_load_refuses_anything_but_this_scripts_checkpoint(any_script, content, message):
    P = any_script
    if isinstance(content, bytes):
        open("bad.pt", "wb").write(content)
    elif content is not None:
        torch.save(content, "bad.pt")
    message = message.replace("SCRIPT", f"{P.__name__}.py")
    with pytest.raises(P.UsageError, match=f"--resume bad.pt: {message}"):
        P.load_checkpoint("bad.pt")


def test_checkpoint_has_everything_to_continue(any_script):
    P = any_script
    result = P.main(tiny(P, save_model=True))
    ckpt = P.load_checkpoint(f"{result['run_dir']}/checkpoint.pt")
    assert ckpt["iteration"] == 4 and ckpt["global_step"] == 128
    assert ckpt["actions"].shape[:2] == (64, 2)
    assert set(ckpt) >= {"agent", "optimizer", "rng", "args", "run_name", "episodes"}
    assert "kl_beta" in ckpt or not hasattr(P.Args, "kl_beta")


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(num_envs=0), "--num-envs must be positive"),
        (dict(num_steps=-5), "--num-steps must be positive"),
        (dict(total_timesteps=0), "--total-timesteps must be positive"),
        (dict(learning_rate=0.0), "--learning-rate must be positive"),
        (dict(gamma=1.5), r"--gamma must be in \[0, 1\]"),
        (dict(total_timesteps=10), "--total-timesteps 10 is less than one batch"),
        (dict(checkpoint_every=2), "--checkpoint-every needs --save-model"),
        (dict(env_id="NoSuchEnv-v0"), "--env-id NoSuchEnv-v0: not a registered gymnasium environment"),
        ("wrong action space", "--env-id WRONG: "),
        (dict(env_id="NoSuchEnv-v0", env_backend="envpool"), "--env-id NoSuchEnv-v0: not an envpool environment"),
        (dict(resume="missing.pt"), "--resume missing.pt: no such file"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(any_script, workdir, kw, message):
    P = any_script
    if kw == "wrong action space":
        wrong_env, reason = TEST_ENVS[P.__name__]["wrong"]
        kw, message = dict(env_id=wrong_env), message.replace("WRONG", wrong_env) + reason
    with pytest.raises(P.UsageError, match=message):
        P.main(tiny(P, **kw))
    assert os.listdir(workdir) == []


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(num_minibatches=3), "--num-minibatches 3 must divide the batch size num_envs\\*num_steps = 32"),
        (dict(target_kl=0.0), "--target-kl must be positive"),
    ],
)
def test_bad_ppo_flags_are_refused_before_anything_is_written(script, workdir, kw, message):
    with pytest.raises(script.UsageError, match=message):
        script.main(tiny(script, **kw))
    assert os.listdir(workdir) == []


def test_env_that_cannot_be_made_is_a_usage_error(any_script, monkeypatch, workdir):
    P = any_script

    def missing_dependency(*a, **k):
        raise P.gym.error.DependencyNotInstalled("Box2D is not installed")

    monkeypatch.setattr(P.gym, "make", missing_dependency)
    env_id = TEST_ENVS[P.__name__]["env_id"]
    with pytest.raises(P.UsageError, match=f"--env-id {env_id}: cannot be made \\(Box2D is not installed\\)"):
        P.main(tiny(P))
    assert os.listdir(workdir) == []


def test_cli_error_is_one_line_and_nonzero_exit(any_script, workdir):
    proc = subprocess.run(
        [sys.executable, str(ROOT / f"{any_script.__name__}.py"), "--gamma", "1.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert (
        proc.stderr.strip().splitlines()[-1] == f"{any_script.__name__}.py: error: --gamma must be in [0, 1], got 1.5"
    )
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(workdir / "runs")


@pytest.mark.parametrize("name", EVERY_SCRIPT)
def test_help_lists_every_flag_with_its_help(name):
    P = importlib.import_module(name)
    proc = subprocess.run(
        [sys.executable, str(ROOT / f"{P.__name__}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0
    for field in P.Args.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in proc.stdout
    # tyro's help text is the docstring under each field: every field has one
    (args_class,) = [
        n for n in ast.parse((ROOT / f"{P.__name__}.py").read_text()).body if getattr(n, "name", "") == "Args"
    ]
    body = args_class.body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign):
            doc = body[i + 1] if i + 1 < len(body) else None
            assert isinstance(doc, ast.Expr) and isinstance(doc.value.value, str) and doc.value.value.strip(), (
                f"Args.{node.target.id} has no docstring"
            )


@pytest.mark.parametrize("name", EVERY_SCRIPT)
def test_the_docs_document_every_flag(name):
    """Each flag is described on the script's page, or on the pages it points to for what it shares: ppo_discrete.py's
    (the common flags' table), trpo_baseline.py's for A2C, and what every script shares (beside the generated --help
    list, which docs/hooks.py inserts and tests/test_docs.py checks)."""
    P = importlib.import_module(name)
    pages = {name, "runs", "ppo_discrete"} | ({"trpo_baseline"} if name == "a2c_baseline" else set())
    docs = "".join((ROOT / "docs" / f"{page}.md").read_text() for page in pages)
    flags = map(P.flag, P.Args.__dataclass_fields__)
    missing = [f for f in flags if f"`{f}`" not in docs]
    assert not missing, f"docs/{name}.md does not document {missing}"


# --- backends and devices ------------------------------------------------------------------------------------


def test_envpool_backend(any_script):
    """envpool runs learn reproducibly, log every episode at the step it ended, and (CartPole and
    InvertedPendulum pay about 1 per step) each episode's return is its length."""
    P = any_script
    result = P.main(tiny(P, env_backend="envpool", total_timesteps=1024))
    again = P.main(tiny(P, env_backend="envpool", total_timesteps=1024))
    assert len(result["history"]) == 32 and len(result["episodes"]) >= 10
    assert learning(result) == learning(again) and result["episodes"] == again["episodes"]
    assert all(abs(r - length) <= 1 and 0 < length <= 1000 for _, r, length in result["episodes"])
    steps = [step for step, _, _ in result["episodes"]]
    assert steps == sorted(steps) and all(0 < s <= 1024 and s % 2 == 0 for s in steps)
    acc = scalars(result["run_dir"])
    assert len(acc.Scalars("charts/episodic_return")) == len(result["episodes"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run(any_script):
    P = any_script
    result = P.main(tiny(P, total_timesteps=1024, save_model=True, eval_episodes=2))
    assert next(result["agent"].parameters()).is_cuda
    assert result["episodes"] and set(result["eval"]) == {"greedy", "sampled"}


def test_resume_says_where_it_resumed_and_when_nothing_is_left(script, capsys):
    """A resumed run names the iteration and step it continues from; a --total-timesteps at or below what the
    checkpoint trained says in one line that there is nothing to train."""
    P = script
    first = P.main(tiny(P, save_model=True))
    ckpt = f"{first['run_dir']}/checkpoint.pt"
    capsys.readouterr()
    P.main(P.parse_args(["--resume", ckpt, "--total-timesteps", "192"]))
    out = capsys.readouterr().out
    assert "resumed from iteration 4 (global_step 128)" in out
    assert "resume: replaying 64 steps of every env, to restore the envs' exact state" in out  # 4 x 16 steps
    P.main(P.parse_args(["--resume", ckpt, "--total-timesteps", "64"]))
    assert "the checkpoint has trained 192 steps, --total-timesteps 64 asks no more" in capsys.readouterr().out
