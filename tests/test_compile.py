"""--compile: the compiled minibatch update (and, where it is compiled, the policy step) computes what the eager
functions compute, as one graph each: no graph break, no recompile after the first call (torch._dynamo's
error_on_recompile raises on any). Compiling takes 15-60 s a script, so these tests are few."""

import copy
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import test_atari
import test_lstm
import torch
from conftest import ROOT, tiny
from test_scripts import rollout_batch
from torch._dynamo.utils import counters

COMPILED_SCRIPTS = ["ppo_discrete", "ppo_continuous", "ppo_atari", "ppo_lstm"]


@pytest.fixture(params=COMPILED_SCRIPTS)
def compiled_script(request):
    torch._dynamo.reset()
    counters.clear()
    # torch's own patch (not monkeypatch: its config entries live outside the module's __dict__); disable=False
    # because conftest runs the rest of the suite eagerly
    with torch._dynamo.config.patch(error_on_recompile=True, disable=False):
        yield importlib.import_module(request.param)
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()


def short_run(P, **kw):
    """4 iterations of 2 envs on the script's test env (Atari: 2 iterations on Breakout; LSTM: 4 envs x 8 steps on
    CartPoleNoVel-v1)."""
    if P.__name__ == "ppo_atari":
        return test_atari.tiny(update_epochs=2, **kw)
    if P.__name__ == "ppo_lstm":  # 8 steps a rollout: the compiled update unrolls the LSTM step by step
        return test_lstm.tiny(num_steps=8, total_timesteps=128, **kw)
    return tiny(P, **kw)


def update_case(P, monkeypatch, loss_type):
    """(agent, batch, args) for one update phase of 2 epochs x 4 minibatches: MLP scripts, a 253-step batch of
    CartPole-v1 (minibatches of 63-64 transitions: sizes differ, so the compiled update must take any size without
    recompiling); ppo_lstm, the first rollout of a run (8 envs x 16 steps of CartPoleNoVel-v1, episode starts in
    it; few steps, as the compiled update unrolls the LSTM step by step), its agent as the rollout left it
    (minibatches of 2 whole env sequences)."""
    kw = dict(num_minibatches=4, update_epochs=2, loss_type=loss_type, compile=True)
    if P.__name__ == "ppo_lstm":
        calls = test_lstm.record_updates(monkeypatch)
        P.main(test_lstm.tiny(num_envs=8, num_steps=16, total_timesteps=128, num_minibatches=4, update_epochs=1))
        agent, batch = calls[0]
        assert not batch["valid"].all()  # reset steps, left out of the losses
        return agent, batch, P.with_task_defaults(P.Args(num_envs=8, num_steps=16, **kw))
    torch.manual_seed(0)
    agent = P.Agent(4, 2) if P.__name__ == "ppo_discrete" else P.Agent(4, 2, False)
    return agent, rollout_batch(P, agent, n=253), P.Args(num_envs=1, num_steps=253, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["clip", "kl-penalty"])
def test_one_compiled_update_equals_the_eager_one(compiled_script, loss_type, monkeypatch):
    """One update phase (update_case) from the same parameters, optimizer state and permutations: parameters,
    Adam's moments and the logged losses equal eager's up to float rounding."""
    P = compiled_script
    if P.__name__ == "ppo_atari":
        pytest.skip("the short run below compares the CNN's compiled update")
    if P.__name__ == "ppo_lstm" and loss_type == "clip":
        pytest.skip("the short run below compares the LSTM's compiled clip update (each compile takes a minute)")
    agent, batch, args = update_case(P, monkeypatch, loss_type)
    twin = copy.deepcopy(agent)
    results = []
    _, compiled_step = P.compile_functions(args, torch.device("cpu"))
    for net, update_step in ((agent, P.minibatch_step), (twin, compiled_step)):
        optimizer = P.make_optimizer(net, 3e-3)
        torch.manual_seed(7)
        stats = P.ppo_update(net, optimizer, batch, args, 0.5, update_step)
        results.append((stats, optimizer.state[optimizer.param_groups[0]["params"][0]]))
    (eager, eager_adam), (compiled, compiled_adam) = results
    assert eager["minibatch_updates"] == compiled["minibatch_updates"] == 8
    for (name, p), q in zip(agent.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    for key in ("exp_avg", "exp_avg_sq", "step"):  # to 1e-5 of each moment's largest entry
        atol = 1e-5 * float(eager_adam[key].abs().max())
        torch.testing.assert_close(compiled_adam[key], eager_adam[key], rtol=1e-4, atol=atol, msg=key)
    assert compiled.keys() == eager.keys()
    np.testing.assert_allclose([compiled[k] for k in eager], list(eager.values()), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_compiled_run_equals_the_eager_one(compiled_script):
    """The same seed eager and with --compile, the learning rate annealed (in place) every iteration: the same
    episodes, and parameters and logged losses equal up to float rounding, with no graph break or recompile."""
    P = compiled_script
    eager = P.main(short_run(P, seed=3, compile=False))
    compiled = P.main(short_run(P, seed=3, compile=True))
    assert [e[1:] for e in compiled["episodes"]] == [e[1:] for e in eager["episodes"]]
    for (name, p), q in zip(eager["agent"].named_parameters(), compiled["agent"].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    for e, c in zip(eager["history"], compiled["history"]):
        assert e["charts/learning_rate"] == c["charts/learning_rate"]
        losses = [k for k in e if k.startswith("losses/")]
        np.testing.assert_allclose([c[k] for k in losses], [e[k] for k in losses], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_compiled_under_torchrun_equals_eager(workdir, tmp_path):
    """ppo_atari --compile under torchrun (the gradient's all-reduce inside the compiled update): both processes
    hold the same parameters, equal to an eager torchrun run's up to float rounding, with no graph break."""
    (tmp_path / "eager").mkdir()
    (tmp_path / "compiled").mkdir()
    _, eager, _ = test_atari.torchrun(tmp_path / "eager", [*test_atari.TORCHRUN_FLAGS, "--no-compile"], port=29521)
    proc, compiled, _ = test_atari.torchrun(
        tmp_path / "compiled",
        [*test_atari.TORCHRUN_FLAGS, "--compile"],
        port=29522,
        TORCH_COMPILE_DISABLE=None,  # conftest's: compile for real
        TORCH_LOGS="graph_breaks,recompiles",
    )
    assert "graph break" not in proc.stderr.lower() and "recompil" not in proc.stderr.lower(), proc.stderr[-3000:]
    for k, v in eager["agent"].items():
        torch.testing.assert_close(compiled["agent"][k], v, rtol=1e-4, atol=1e-6)
    for e, c in zip(eager["history"], compiled["history"]):
        assert e["charts/minibatch_updates"] == c["charts/minibatch_updates"]
        assert e["losses/value_loss"] == pytest.approx(c["losses/value_loss"], rel=1e-4)


def test_the_default_is_on_where_it_was_measured_to_win():
    """README (Speed: --compile): on by default in ppo_continuous.py only."""
    defaults = {name: importlib.import_module(name).Args().compile for name in COMPILED_SCRIPTS}
    assert defaults == {"ppo_discrete": False, "ppo_continuous": True, "ppo_atari": False, "ppo_lstm": False}


@pytest.mark.slow
def test_a_compiled_run_learns_like_the_eager_one(ppo_discrete):
    """CartPole-v1 at CleanRL's defaults for 40 iterations (20,480 steps), seed 1: the compiled run's last 20
    episodes average within 10% of the eager run's (measured: 64.2 both), far above a random policy's ~22."""
    P = ppo_discrete
    torch._dynamo.reset()
    returns = []
    for compile in (False, True):
        with torch._dynamo.config.patch(disable=False):
            result = P.main(P.Args(total_timesteps=20_480, compile=compile))
        returns.append(np.mean([r for _, r, _ in result["episodes"]][-20:]))
    assert returns[0] > 50 and abs(returns[1] - returns[0]) <= 0.1 * returns[0], returns


WARM_CACHE_PROBE = """
import sys, torch
sys.path.insert(0, {root!r})
import ppo_discrete as P
torch.set_num_threads(1)
torch.manual_seed(0)
args = P.Args(compile=True, clip_coef={clip}, ent_coef={clip}, vf_coef=10 * {clip})
agent = P.Agent(4, 2)
_, step = P.compile_functions(args, torch.device("cpu"))
g = torch.Generator().manual_seed(1)
for n in (64, 63, 62):
    mb = dict(obs=torch.randn(n, 4, generator=g), actions=torch.randint(0, 2, (n,), generator=g))
    mb.update(logprobs=-0.7 + 0.3 * torch.randn(n, generator=g), logp_all=torch.full((n, 2), -0.69))
    mb.update(values=torch.randn(n, generator=g), advantages=torch.randn(n, generator=g))
    mb["returns"] = mb["values"] + torch.randn(n, generator=g)
    eager = torch.stack(list(P.ppo_loss(agent, mb, args, 1.0)[1].values()))
    compiled = torch.stack(list(step.keywords["loss_fn"](agent, mb, args, torch.tensor(1.0))[1].values()))
    assert torch.allclose(eager, compiled, rtol=1e-5, atol=1e-6), (n, eager, compiled)
"""


@pytest.mark.slow
def test_a_warm_compile_cache_never_hands_over_other_coefficients(tmp_path):
    """Two processes, one compile cache: the second, with other loss coefficients, computes its own loss (pytorch
    #194976: a dynamic Python float made the cached graph keep the first process's values, silently)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "TORCH_COMPILE_DISABLE": "0"}
    for clip in (0.02, 0.2):
        code = WARM_CACHE_PROBE.format(root=str(ROOT), clip=clip)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
