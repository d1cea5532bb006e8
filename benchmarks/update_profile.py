"""Where a minibatch update's time goes, eager against `--compile`: one script's `minibatch_step` on a fixed
minibatch (random observations, the script's default minibatch size), timed in-process, and torch.profiler's top
operators by self CPU time for each path.

    python -m benchmarks.update_profile                                  # ppo_atari.py: 256 frames a minibatch
    python -m benchmarks.update_profile --script ppo_discrete.py --steps 50     # 128 transitions, 1 thread

It shows what compiling can change: the operators Inductor fuses (casts, divisions, activations and their
gradients, the optimizer) and not those it leaves to ATen (convolutions and matrix products, the same kernels in
both paths).
"""

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from torch.profiler import ProfilerActivity, profile

from benchmarks.speed import ROOT

SCRIPTS = ("ppo_atari.py", "ppo_discrete.py", "ppo_continuous.py")


@dataclass
class Args:
    script: str = "ppo_atari.py"
    """the script whose minibatch_step is measured: ppo_atari.py, ppo_discrete.py or ppo_continuous.py"""
    steps: int = 10
    """timed minibatch steps per path (after 3 warm-up steps, which include compiling)"""
    threads: int = 0
    """torch threads (0: the script's own default: 1 for the MLP scripts, the cores available for ppo_atari.py)"""
    rows: int = 10
    """operators listed per path"""


def minibatch(module, script: str) -> tuple[torch.nn.Module, dict, object]:
    """(agent, minibatch, args) at the script's defaults, with random observations, actions and returns."""
    args = module.Args(compile=True)
    size = args.minibatch_size
    if script == "ppo_continuous.py":
        agent = module.Agent(17, 6, False)  # HalfCheetah's sizes
        mb = {"obs": torch.randn(size, 17), "actions": torch.randn(size, 6), "logprobs": torch.full((size,), -8.0)}
        mb.update(means=torch.zeros(size, 6), logstds=torch.zeros(size, 6))  # the old policy (PPO-Penalty's KL)
    else:
        if script == "ppo_atari.py":
            agent, obs, num_actions = module.Agent(4), torch.randint(0, 256, (size, 4, 84, 84), dtype=torch.uint8), 4
        else:
            agent, obs, num_actions = module.Agent(4, 2), torch.randn(size, 4), 2  # CartPole's sizes
        mb = {"obs": obs, "actions": torch.randint(0, num_actions, (size,))}
        mb["logp_all"] = torch.full((size, num_actions), -float(torch.log(torch.tensor(num_actions))))
        mb["logprobs"] = mb["logp_all"][:, 0].clone()
    mb.update(values=torch.randn(size), advantages=torch.randn(size), returns=torch.randn(size))
    return agent, mb, args


def main(args: Args) -> None:
    if args.script not in SCRIPTS:
        raise SystemExit(f"benchmarks.update_profile: error: --script {args.script}: not one of {', '.join(SCRIPTS)}")
    os.environ.pop("TORCH_COMPILE_DISABLE", None)
    sys.path.insert(0, str(ROOT))
    module = __import__(Path(args.script).stem)
    torch.manual_seed(0)
    agent, mb, script_args = minibatch(module, args.script)
    torch.set_num_threads(args.threads or script_args.torch_threads or module.cpu_share())
    optimizer = module.make_optimizer(agent, script_args.learning_rate)
    _, compiled = module.compile_functions(script_args, torch.device("cpu"))
    for name, step in (("eager", module.minibatch_step), ("--compile", compiled)):
        for _ in range(3):
            step(agent, optimizer, mb, script_args, 0.5)
        start = time.perf_counter()
        for _ in range(args.steps):
            step(agent, optimizer, mb, script_args, 0.5)
        ms = (time.perf_counter() - start) / args.steps * 1000
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step(agent, optimizer, mb, script_args, 0.5)
        print(f"\n{args.script} {name}: {ms:.2f} ms per minibatch step ({len(mb['obs'])} samples)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=50))


if __name__ == "__main__":
    main(tyro.cli(Args))
