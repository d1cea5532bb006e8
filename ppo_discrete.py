# PPO for discrete actions: CleanRL's ppo.py (same flags, same TensorBoard tags), corrected and faster; one file of
# the ppo-single-file project that runs on its own when copied.
# Needs: pip install torch gymnasium numpy tyro tensorboard tqdm   (--track: wandb; --capture-video: moviepy pygame)
# Paper: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv 1707.06347.
import contextlib
import functools
import importlib.util
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

CHECKPOINT_FORMAT = "ppo_discrete.py checkpoint v3"  # v3: the run plumbing's layout
# Flags a resumed run must keep: they make its environments, or change what its saved agent computes.
RESUME_FIXED = ("env_id", "env_backend", "num_envs", "num_steps", "seed")


@dataclass
class Args:
    # Algorithm specific arguments
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    env_backend: Literal["gymnasium", "envpool"] = "gymnasium"
    """vector environment implementation: gymnasium's SyncVectorEnv or envpool"""
    total_timesteps: int = 500000
    """total timesteps of the experiments"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer"""
    num_envs: int = 4
    """the number of parallel game environments"""
    num_steps: int = 128
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """Toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """Toggles advantages normalization"""
    loss_type: Literal["clip", "kl-penalty"] = "clip"
    """policy objective: the clipped surrogate, or the paper's adaptive KL penalty (PPO-Penalty)"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient (also the value clipping range)"""
    clip_vloss: bool = True
    """Toggles whether or not to use a clipped loss for the value function, as per the paper."""
    kl_target: float = 0.01
    """PPO-Penalty's KL target d_targ (beta halves below d_targ/1.5 and doubles above 1.5*d_targ)"""
    kl_beta: float = 1.0
    """PPO-Penalty's initial KL coefficient beta"""
    ent_coef: float = 0.01
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: float | None = None
    """early-stop the update phase at the first minibatch whose approx_kl exceeds this (None: never)"""

    # Run options
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be enabled by default"""
    torch_threads: int = 1
    """torch CPU threads (1 is fastest for small networks)"""
    compile: bool = False
    """compile the minibatch update (loss, forward and backward) with torch.compile"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "cleanRL"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to capture videos of the agent performances (check out `videos` folder)"""
    save_model: bool = False
    """whether to save a checkpoint to `runs/{run_name}/checkpoint.pt` at the end (and every `--checkpoint-every` iterations)"""
    checkpoint_every: int = 0
    """with `--save-model`, also checkpoint every this many iterations (0: only at the end)"""
    resume: str | None = None
    """path of a checkpoint of this script to continue from (its flags become the defaults)"""
    eval_episodes: int = 0
    """after training, evaluate the final policy for this many episodes, greedy and sampled (0: no evaluation)"""

    @property
    def batch_size(self) -> int:
        """the batch size (num_envs * num_steps)"""
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        """the mini-batch size (batch_size // num_minibatches)"""
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        """the number of iterations (total_timesteps // batch_size)"""
        return self.total_timesteps // self.batch_size


def make_env(env_id, idx, capture_video, run_name):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


def make_envs(args: Args, num_envs: int, seed: int, capture_video: bool, run_name: str) -> gym.vector.VectorEnv:
    """A vector env with gymnasium's next-step autoreset and episode statistics, either backend.

    After a step that ends an episode (terminated or truncated) the observation is the episode's final
    observation; the next step ignores its action and returns the reset observation with reward 0.
    """
    if args.env_backend == "envpool":
        import envpool

        num_threads = min(num_envs, len(os.sched_getaffinity(0)))
        envs = envpool.make(args.env_id, env_type="gymnasium", num_envs=num_envs, seed=seed, num_threads=num_threads)
    else:
        envs = gym.vector.SyncVectorEnv(
            [make_env(args.env_id, i, capture_video, run_name) for i in range(num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
        )
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """CleanRL's discrete-action agent: separate 2x64 tanh critic and actor, a Categorical policy over the actor's
    logits. Every use of the policy goes through its methods, so a new network is an edit in this class."""

    def __init__(self, obs_dim: int, num_actions: int):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, num_actions), std=0.01),
        )

    def get_value(self, x):
        """V(x): [N] for observations [N, D]."""
        return self.critic(x).squeeze(-1)

    def get_action_and_value(self, x, action=None):
        """For observations x [N, D] and their actions [N] int64 (sampled when None): (action, log pi(a|x) [N],
        entropy [N], V(x) [N], log pi(.|x) [N, A] of every action, which PPO-Penalty's exact KL uses)."""
        logits = self.actor(x)
        if action is None:
            action = torch.distributions.Categorical(logits=logits).sample()
        logprob, entropy, logp_all = logprobs_and_entropy(logits, action)
        return action, logprob, entropy, self.get_value(x), logp_all

    def get_action(self, x, noise):
        """The rollout's sample: actions [N] int64 from Categorical(logits=actor(x)) by the Gumbel-max trick, with
        `noise` [N, A] from gumbel_noise (no value, no log-probability: make_batch computes them in one pass)."""
        return (self.actor(x) + noise).argmax(-1)

    def get_greedy_action(self, x):
        """argmax_a pi(a|x): [N] int64."""
        return self.actor(x).argmax(-1)


def logprobs_and_entropy(logits, actions):
    """Categorical log pi(a|s) of `actions` [B] (int64) and entropy, both [B], from logits [B, A]."""
    logp_all = torch.log_softmax(logits, dim=-1)
    logprob = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprob, entropy, logp_all


def main(args: Args) -> dict:
    """Train (and evaluate) as `args` says. Returns the run's record (Run.finish): run_name, run_dir, history,
    episodes, eval and the trained agent.

    Raises:
        UsageError: bad flags or `--resume` file, before anything is built or written.
    """
    run = Run.start(args)  # checks the flags, the env and a --resume file, before anything is built or written
    obs_space, act_space = run.spaces

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    agent = Agent(obs_space.shape[0], act_space.n).to(device)
    optimizer = make_optimizer(agent, args.learning_rate)
    # What a checkpoint saves besides the flags and progress. lr_schedule: where the decay starts (iteration, rate);
    # actions: every action taken, replayed into freshly seeded envs on resume.
    train = {"agent": agent, "optimizer": optimizer, "kl_beta": args.kl_beta, "lr_schedule": (1, args.learning_rate)}
    train["actions"] = []
    start_iteration, global_step = run.begin(train)  # a --resume checkpoint is loaded into `train` here
    if run.ckpt is not None:
        train["lr_schedule"] = resumed_lr_schedule(run.ckpt, args)

    policy, update_step = compile_functions(args, device)

    # env setup
    envs = make_envs(args, args.num_envs, args.seed, args.capture_video, run.name)
    buffers = make_buffers(args, obs_space.shape[0], device, action_log=train["actions"])
    start_envs(envs, args, buffers, train["actions"], replay=start_iteration <= args.num_iterations)

    with run.training(envs):  # Ctrl-C and SIGTERM checkpoint and stop; the envs and the logs close at the end
        for iteration in range(start_iteration, args.num_iterations + 1):
            lrnow = args.learning_rate
            if args.anneal_lr:  # Annealing the rate if instructed to do so.
                lrnow = annealed_lr(iteration, args.num_iterations, train["lr_schedule"][1], train["lr_schedule"][0])
            set_learning_rate(optimizer, lrnow)

            global_step, episodes = rollout(agent, envs, policy, buffers, args, global_step)
            batch = make_batch(agent, buffers, args)
            stats = ppo_update(agent, optimizer, batch, args, train["kl_beta"], update_step)
            if args.loss_type == "kl-penalty":
                train["kl_beta"] = adapt_kl_beta(train["kl_beta"], stats["kl"], args.kl_target)
            if run.end_iteration(iteration, global_step, lrnow, stats, episodes, train):
                break
        run.finish(agent, global_step)
    return run.record


def start_envs(envs, args: Args, buffers: dict, actions: list, replay: bool) -> None:
    """Reset the envs (gymnasium: seeded with `args.seed`; envpool was seeded at make) into buffers["obs"][T]. A
    resumed run with iterations left first replays the `actions` it took ([steps, N] tensors), which brings the
    freshly seeded envs to the exact state they were in."""
    next_obs, _ = envs.reset(seed=args.seed if args.env_backend == "gymnasium" else None)
    steps = torch.cat(actions).long().numpy() if actions and replay else []
    for step_actions in replay_progress(steps):
        next_obs, _, term, trunc, _ = envs.step(step_actions)
        buffers["next_done"] = term | trunc
    buffers["obs"][args.num_steps] = torch.as_tensor(next_obs, device=buffers["obs"].device)


def replay_progress(steps):
    """The replayed steps, announced in one line and shown as a progress bar on a terminal: replaying a long run
    takes minutes (about 3 minutes for 1M steps of HalfCheetah)."""
    if len(steps):
        print(f"resume: replaying {len(steps):,} steps of every env, to restore the envs' exact state", flush=True)
    return tqdm(steps, desc="replay", unit="step", disable=None, leave=False)


def make_buffers(args: Args, obs_dim: int, device: torch.device, action_log: list) -> dict:
    """The rollout's preallocated storage: obs [T + 1, N, D] (obs[t] is the observation acted on at step t,
    obs[T] the next one, where the next rollout starts) and actions [T, N] int64 on the device; rewards,
    terminations, truncations [T, N] float32 on the host (what the env returns moves to the device once per
    iteration); next_done [N] bool (whether the last step ended an episode), reset_first [N] bool (next_done
    when this rollout started) and `action_log`, the list each rollout appends its actions to."""
    shape = (args.num_steps, args.num_envs)
    return {
        "obs": torch.zeros((args.num_steps + 1, args.num_envs, obs_dim), device=device),
        "actions": torch.zeros(shape, dtype=torch.long, device=device),
        "rewards": np.zeros(shape, dtype=np.float32),
        "terminations": np.zeros(shape, dtype=np.float32),
        "truncations": np.zeros(shape, dtype=np.float32),
        "next_done": np.zeros(args.num_envs, dtype=bool),
        "reset_first": np.zeros(args.num_envs, dtype=bool),
        "action_log": action_log,
    }


def rollout(agent: Agent, envs, policy, buffers: dict, args: Args, global_step: int) -> tuple[int, list]:
    """Play `num_steps` steps of every env with `policy` (Agent.get_action, or its compiled version), into `buffers`.

    Returns (global_step after the rollout, the episodes that ended: [(global_step, return, length)]).
    """
    obs, actions = buffers["obs"], buffers["actions"]
    obs[0] = obs[args.num_steps]
    buffers["reset_first"] = buffers["next_done"]
    obs_t, actions_t = obs.unbind(0), actions.unbind(0)  # per-step views: cheaper to write than obs[step]
    rewards, terminations, truncations = buffers["rewards"], buffers["terminations"], buffers["truncations"]
    episodes = []
    with torch.inference_mode():
        # Gumbel-max sampling: argmax(logits + G) with G ~ Gumbel(0, 1) is a sample of Categorical(logits).
        gumbel = gumbel_noise((args.num_steps, args.num_envs, envs.single_action_space.n), obs.device)
        for step in range(0, args.num_steps):
            global_step += args.num_envs
            action = policy(agent, obs_t[step], gumbel[step])
            actions_t[step].copy_(action)

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, rewards[step], terminations[step], truncations[step], infos = envs.step(action.cpu().numpy())
            obs_t[step + 1].copy_(torch.from_numpy(next_obs))
            if "episode" in infos:
                for i in np.nonzero(infos["_episode"])[0]:
                    episodes.append((global_step, float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])))
    buffers["next_done"] = (terminations[-1] + truncations[-1]) > 0
    action_dtype = torch.uint8 if envs.single_action_space.n <= 256 else torch.int32
    buffers["action_log"].append(actions.to("cpu", action_dtype, copy=True))
    return global_step, episodes


def make_batch(agent: Agent, buffers: dict, args: Args) -> dict:
    """The update's batch from the rollout in `buffers`: old log-probabilities and values in one batched pass (the
    parameters did not change during the rollout), GAE advantages and returns (compute_gae), flattened to the
    B transitions that are no reset steps (the step after an episode ended, its action ignored, is no
    transition). Keys and shapes: ppo_update's `batch`; a new key added here reaches ppo_loss's minibatch."""
    obs, actions, device = buffers["obs"], buffers["actions"], buffers["obs"].device
    terminations, truncations = buffers["terminations"], buffers["truncations"]
    is_reset = np.concatenate([buffers["reset_first"][None], (terminations[:-1] + truncations[:-1]) > 0])
    b_inds = torch.from_numpy(np.flatnonzero(~is_reset)).to(device)
    with torch.inference_mode():
        _, logprobs, _, _, logp_all = agent.get_action_and_value(obs[:-1], actions)
        values = agent.get_value(obs)
        t_rewards, t_terms, t_truncs = (
            torch.from_numpy(x).to(device) for x in (buffers["rewards"], terminations, truncations)
        )
        advantages = compute_gae(t_rewards, values, t_terms, t_truncs, args.gamma, args.gae_lambda)
        returns = advantages + values[:-1]
    # flatten the batch (indexing outside inference mode gives normal tensors that autograd accepts)
    return {
        "obs": obs[:-1].reshape(-1, obs.shape[-1])[b_inds],
        "actions": actions.reshape(-1)[b_inds],
        "logprobs": logprobs.reshape(-1)[b_inds],
        "logp_all": logp_all.reshape(-1, logp_all.shape[-1])[b_inds],
        "values": values[:-1].reshape(-1)[b_inds],
        "advantages": advantages.reshape(-1)[b_inds],
        "returns": returns.reshape(-1)[b_inds],
    }


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminations: torch.Tensor,
    truncations: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> torch.Tensor:
    """Generalised advantage estimates for a next-step-autoreset rollout (Schulman et al. 2016, eq. 16).

    Args:
        rewards: [T, N] float, reward of step t.
        values: [T + 1, N] float, V(obs_t) for t = 0..T; values[t + 1] is the value of the observation that
            step t returned, which is the episode's final observation when step t ended it.
        terminations, truncations: [T, N] float 0/1, whether step t ended the episode by a terminal state or
            by a time limit.
    Returns:
        advantages: [T, N] float. delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t), so a
        truncated step bootstraps from V(final observation) and a terminated one does not; the recursion
        A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1} never crosses an episode boundary. Entries for
        reset steps (the step after an episode ended, whose action the env ignores) are meaningless: the
        caller drops them from the batch.
    """
    deltas = rewards + gamma * values[1:] * (1.0 - terminations) - values[:-1]
    discounts = gamma * gae_lambda * (1.0 - torch.maximum(terminations, truncations))
    advantages = torch.empty_like(deltas)
    lastgaelam = torch.zeros_like(deltas[0])
    for t in reversed(range(deltas.shape[0])):
        lastgaelam = torch.addcmul(deltas[t], discounts[t], lastgaelam)
        advantages[t] = lastgaelam
    return advantages


def ppo_update(
    agent: Agent, optimizer: torch.optim.Optimizer, batch: dict, args: Args, kl_beta: float, update_step=None
) -> dict:
    """The update phase of one iteration: `update_epochs` passes over shuffled minibatches.

    batch: flat tensors of the B transitions of the rollout (reset steps left out): obs [B, D], actions [B]
    int64, logprobs [B], logp_all [B, A] (old log-probabilities of every action), values [B], advantages [B],
    returns [B]. Each epoch shuffles them into `num_minibatches` minibatches (sizes differ by at most one), each
    one `update_step` (minibatch_step, or its compiled version). Before each minibatch's step, its approx_kl is
    compared with `args.target_kl`: above it, the whole update phase ends there (the step is not taken).
    Returns the losses averaged over the minibatches that were run (old_approx_kl, approx_kl and clipfrac
    over their samples, measured before each step as in CleanRL), `minibatch_updates`, `explained_variance` of the
    batch's returns by its values, and with PPO-Penalty the mean KL to the old policy after the update (`kl`) and
    the `kl_beta` used.
    """
    update_step = update_step or minibatch_step
    losses, logratios = [], []
    stop = False
    beta = torch.tensor(kl_beta, device=batch["advantages"].device)  # a tensor: no recompile when it adapts
    for epoch in range(args.update_epochs):
        b_inds = torch.randperm(len(batch["obs"]), device=batch["obs"].device)
        # Shuffle once per epoch; each minibatch is then a slice (a view) of every tensor.
        minibatches = zip(*(v[b_inds].tensor_split(args.num_minibatches) for v in batch.values()))
        for mb_values in minibatches:
            mb = dict(zip(batch.keys(), mb_values))
            if args.target_kl is not None and minibatch_approx_kl(agent, mb) > args.target_kl:
                stop = True
                break
            mb_losses, logratio = update_step(agent, optimizer, mb, args, beta)
            losses.append(mb_losses)
            logratios.append(logratio)
        if stop:
            break
    stats = {"minibatch_updates": len(losses)}
    if losses:  # statistics once per iteration, not per minibatch: over the samples of the minibatches run
        means = torch.stack([torch.stack(list(mb_losses.values())) for mb_losses in losses]).mean(0).tolist()
        stats.update(zip(losses[0], means))  # policy_loss, value_loss, entropy, and any term ppo_loss adds
        logratio = torch.cat(logratios)
        clipfrac = ((logratio.exp() - 1.0).abs() > args.clip_coef).float().mean()
        stats_t = torch.stack([(-logratio).mean(), approx_kl(logratio), clipfrac]).tolist()
        stats.update(zip(("old_approx_kl", "approx_kl", "clipfrac"), stats_t))
    stats["explained_variance"] = explained_variance(batch["values"], batch["returns"])
    if args.loss_type == "kl-penalty":
        with torch.no_grad():
            new_logp_all = agent.get_action_and_value(batch["obs"], batch["actions"])[4]
            stats.update(kl=categorical_kl(batch["logp_all"], new_logp_all).mean().item(), kl_beta=kl_beta)
    return stats


def minibatch_step(
    agent: Agent, optimizer: torch.optim.Adam, mb: dict, args: Args, kl_beta, loss_fn=None
) -> tuple[dict, torch.Tensor]:
    """One gradient step on one minibatch, as CleanRL: loss (`loss_fn`: ppo_loss, or its compiled version), backward,
    gradient-norm clip, Adam step. Returns (losses, logratio [M]) of ppo_loss, measured before the step."""
    loss, losses, logratio = (loss_fn or ppo_loss)(agent, mb, args, kl_beta)
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    return losses, logratio


def ppo_loss(agent: Agent, mb: dict, args: Args, kl_beta) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """PPO's loss on one minibatch (M transitions of ppo_update's batch): L = L_clip (or PPO-Penalty's)
    - ent_coef * H + vf_coef * L_V (arXiv 1707.06347, eq. 9).

    Returns (loss: 0-d, differentiable; losses: {name: 0-d detached}, logged as losses/{name}; logratio [M]:
    log pi(a|s) - log pi_old(a|s), detached).
    """
    _, newlogprob, entropy, newvalue, newlogp_all = agent.get_action_and_value(mb["obs"], mb["actions"])
    logratio = newlogprob - mb["logprobs"]
    mb_advantages = mb["advantages"]
    if args.norm_adv:
        mb_advantages = normalize_advantages(mb_advantages)
    if args.loss_type == "clip":
        pg_loss = clipped_policy_loss(logratio, mb_advantages, args.clip_coef)
    else:
        kl = categorical_kl(mb["logp_all"], newlogp_all)
        pg_loss = kl_penalty_policy_loss(logratio, mb_advantages, kl, kl_beta)
    v_loss = value_loss(newvalue, mb["values"], mb["returns"], args.clip_coef, args.clip_vloss)
    entropy_loss = entropy.mean()
    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
    losses = {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy_loss}
    return loss, {k: v.detach() for k, v in losses.items()}, logratio.detach()


def normalize_advantages(advantages: torch.Tensor) -> torch.Tensor:
    """(A - mean) / (std + 1e-8) with the unbiased std, as CleanRL. Shape [B], B >= 2."""
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def clipped_policy_loss(logratio, advantages, clip_coef):
    """PPO's clipped surrogate, negated for minimisation (arXiv 1707.06347, eq. 7).

    logratio: [B] log pi(a|s) - log pi_old(a|s); advantages: [B]. Returns a 0-d tensor:
    mean of max(-A * r, -A * clip(r, 1 - eps, 1 + eps)), r = exp(logratio).
    """
    ratio = logratio.exp()
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    return torch.max(pg_loss1, pg_loss2).mean()


def kl_penalty_policy_loss(logratio, advantages, kl, beta):
    """PPO-Penalty's objective, negated (arXiv 1707.06347, eq. 8): mean of -(A * r - beta * KL[pi_old, pi]).

    logratio, advantages: [B]; kl: [B] KL(pi_old(.|s) || pi(.|s)) per state; beta: float or 0-d tensor.
    """
    return (-advantages * logratio.exp() + beta * kl).mean()


def value_loss(newvalue, oldvalue, returns, clip_coef, clip_vloss):
    """0.5 * squared error of V(s) to the returns; with `clip_vloss`, the max of the unclipped and the
    clipped error, the clipped value being oldvalue + clip(newvalue - oldvalue, -eps, eps) (as baselines/CleanRL).
    All inputs [B]; returns a 0-d tensor."""
    v_loss_unclipped = (newvalue - returns) ** 2
    if not clip_vloss:
        return 0.5 * v_loss_unclipped.mean()
    v_clipped = oldvalue + torch.clamp(newvalue - oldvalue, -clip_coef, clip_coef)
    v_loss_clipped = (v_clipped - returns) ** 2
    return 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()


def categorical_kl(old_logp_all, new_logp_all):
    """Exact KL(pi_old(.|s) || pi(.|s)) per state, [B], from the log-probabilities of every action, [B, A]:
    sum_a pi_old(a|s) (log pi_old(a|s) - log pi(a|s)). PPO-Penalty's penalty term (arXiv 1707.06347, eq. 8)."""
    return (old_logp_all.exp() * (old_logp_all - new_logp_all)).sum(-1)


def approx_kl(logratio):
    """Schulman's low-variance estimator of KL(pi_old || pi): mean((r - 1) - log r), r = exp(logratio).

    Always >= 0 (http://joschu.net/blog/kl-approx.html). logratio: [B]; returns a 0-d tensor.
    """
    return (torch.expm1(logratio) - logratio).mean()


def minibatch_approx_kl(agent: Agent, mb: dict) -> torch.Tensor:
    """approx_kl (0-d) of the current policy against the rollout's on minibatch `mb`, for the KL early stop."""
    with torch.no_grad():
        _, newlogprob, _, _, _ = agent.get_action_and_value(mb["obs"], mb["actions"])
        return approx_kl(newlogprob - mb["logprobs"])


def explained_variance(y_pred: torch.Tensor, y_true: torch.Tensor) -> float:
    """1 - Var[y_true - y_pred] / Var[y_true] for [B] tensors (NaN when y_true is constant): how much of the returns'
    variance the value function explains (1: all, 0: no better than a constant)."""
    var_y = y_true.var()
    return (1 - (y_true - y_pred).var() / var_y).item() if var_y > 0 else float("nan")


def make_optimizer(agent: nn.Module, learning_rate: float) -> torch.optim.Adam:
    """torch.optim.Adam (eps 1e-5, as CleanRL) over the agent's parameters, fused (one kernel steps them all), with
    its learning rate a 0-d float64 tensor that annealing sets in place (set_learning_rate), so a compiled update
    never recompiles for it. Call it after moving the agent to its device."""
    device = next(agent.parameters()).device
    lr = torch.tensor(learning_rate, dtype=torch.float64, device=device)
    return torch.optim.Adam(agent.parameters(), lr=lr, eps=1e-5, fused=True)


def set_learning_rate(optimizer: torch.optim.Adam, lr: float) -> None:
    """Write `lr` into the optimizer's 0-d float64 learning-rate tensor on the parameter's device, in place. What
    `load_state_dict` put there (a float from an older checkpoint, or the checkpoint's tensor, loaded to the CPU)
    becomes such a tensor first."""
    group = optimizer.param_groups[0]
    device = group["params"][0].device
    if not isinstance(group["lr"], torch.Tensor) or group["lr"].device != device:
        group["lr"] = torch.tensor(0.0, dtype=torch.float64, device=device)
    group["lr"].fill_(lr)


def annealed_lr(iteration: int, num_iterations: int, learning_rate: float, start: int = 1) -> float:
    """Linear decay from `learning_rate` at iteration `start` to 0 one iteration after `num_iterations`:
    learning_rate * (1 - (iteration - start) / (num_iterations - start + 1)). With start 1 (the default) this is
    CleanRL's schedule, learning_rate * (1 - (iteration - 1) / num_iterations): it starts at learning_rate and
    ends at learning_rate / num_iterations, never 0 during training. A resumed run that trains longer continues
    from a later start (resumed_lr_schedule)."""
    return (1.0 - (iteration - start) / (num_iterations - start + 1.0)) * learning_rate


def resumed_lr_schedule(ckpt: dict, args: Args) -> tuple[int, float]:
    """Where a resumed run's learning-rate decay starts: (start iteration, rate there), for annealed_lr.

    The checkpoint's schedule is kept when `--total-timesteps`, `--learning-rate` and `--anneal-lr` are those it
    was saved with, so the resumed run is exactly the uninterrupted one. Otherwise the rate must not jump
    ("train longer": a larger `--total-timesteps` would otherwise put the rate back up the old line): the decay
    starts again from the rate of the checkpoint's last iteration k and falls linearly to 0 one iteration after
    the new end. A new `--learning-rate` starts the decay from that rate at iteration k + 1 instead.
    """
    saved, k = ckpt["args"], ckpt["iteration"]
    start, rate = ckpt.get("lr_schedule", (1, saved["learning_rate"]))  # checkpoints of the first format
    if args.learning_rate != saved["learning_rate"]:
        return k + 1, args.learning_rate
    saved_iterations = saved["total_timesteps"] // (saved["num_envs"] * saved["num_steps"])
    if args.num_iterations == saved_iterations and args.anneal_lr == saved["anneal_lr"]:
        return start, rate
    last = annealed_lr(k, saved_iterations, rate, start) if saved["anneal_lr"] else saved["learning_rate"]
    return k, last


def adapt_kl_beta(beta: float, kl: float, kl_target: float) -> float:
    """PPO-Penalty's adaptive coefficient (arXiv 1707.06347, section 4): halve beta when the measured KL is
    below kl_target / 1.5, double it when above kl_target * 1.5, keep it otherwise."""
    if kl < kl_target / 1.5:
        return beta / 2
    if kl > kl_target * 1.5:
        return beta * 2
    return beta


def evaluate(agent: Agent, args: Args, episodes: int, greedy: bool, device: torch.device) -> np.ndarray:
    """Run the policy for `episodes` full episodes on fresh envs (seed `args.seed + 10000`) without learning.

    Greedy takes argmax pi(a|s); otherwise actions are sampled with noise from a private generator, so evaluation
    leaves the training RNG untouched. Each of the min(episodes, num_envs) envs runs a fixed share of
    the episodes, so short episodes are not over-represented. Returns [episodes] float64 returns.
    """
    num_envs = min(episodes, args.num_envs)
    quota = np.array([episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)])
    envs = make_envs(args, num_envs, args.seed + 10000, capture_video=False, run_name="")
    generator = torch.Generator(device=device).manual_seed(args.seed + 10000)
    returns = [[] for _ in range(num_envs)]
    next_obs, _ = envs.reset(seed=args.seed + 10000 if args.env_backend == "gymnasium" else None)
    with torch.inference_mode():
        while any(len(r) < q for r, q in zip(returns, quota)):
            obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
            if greedy:
                action = agent.get_greedy_action(obs)
            else:
                noise = -torch.empty((num_envs, envs.single_action_space.n), device=device)
                action = agent.get_action(obs, noise.exponential_(generator=generator).log())
            next_obs, _, _, _, infos = envs.step(action.cpu().numpy())
            if "episode" in infos:
                for i in np.nonzero(infos["_episode"])[0]:
                    if len(returns[i]) < quota[i]:
                        returns[i].append(float(infos["episode"]["r"][i]))
    envs.close()
    return np.array([r for env_returns in returns for r in env_returns])


# ---- this script's checks (run by Run.start, before anything is built or written) ----


def validate_args(args: Args) -> None:
    """Check the flags that need no environment.

    Raises:
        UsageError: naming the first bad flag.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(
            "torchrun: this script trains in one process, run it with python (ppo_atari.py trains data-parallel)"
        )
    for name in ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "torch_threads"):
        if getattr(args, name) <= 0:
            raise UsageError(f"{flag(name)} must be positive, got {getattr(args, name)}")
    for name in ("learning_rate", "clip_coef", "kl_target", "max_grad_norm"):
        if not getattr(args, name) > 0:
            raise UsageError(f"{flag(name)} must be positive, got {getattr(args, name)}")
    for name in ("gamma", "gae_lambda"):
        if not 0 <= getattr(args, name) <= 1:
            raise UsageError(f"{flag(name)} must be in [0, 1], got {getattr(args, name)}")
    for name in ("ent_coef", "vf_coef", "kl_beta", "checkpoint_every", "eval_episodes"):
        if getattr(args, name) < 0:
            raise UsageError(f"{flag(name)} must not be negative, got {getattr(args, name)}")
    if args.target_kl is not None and not args.target_kl > 0:
        raise UsageError(f"--target-kl must be positive or None, got {args.target_kl}")
    if args.batch_size % args.num_minibatches:
        raise UsageError(
            f"--num-minibatches {args.num_minibatches} must divide the batch size "
            f"num_envs*num_steps = {args.batch_size}"
        )
    if args.norm_adv and args.batch_size // args.num_minibatches < 4:  # the std of 1-2 samples: 0 or nan
        raise UsageError(
            f"--num-minibatches {args.num_minibatches} leaves {args.batch_size // args.num_minibatches} samples a "
            "minibatch: --norm-adv needs at least 4 (fewer minibatches, or --no-norm-adv)"
        )
    if args.total_timesteps < args.batch_size:
        raise UsageError(
            f"--total-timesteps {args.total_timesteps} is less than one batch (num_envs*num_steps = {args.batch_size})"
        )
    if args.checkpoint_every and not args.save_model:
        raise UsageError("--checkpoint-every needs --save-model")
    if args.capture_video and args.env_backend != "gymnasium":
        raise UsageError("--capture-video needs --env-backend gymnasium")


def check_env(args: Args) -> tuple[gym.Space, gym.Space]:
    """Refuse environments this script cannot learn on: it needs a Discrete action space and a flat Box observation;
    with --capture-video, the env must render (check_video).

    Returns the (observation, action) spaces of one env.

    Raises:
        UsageError: naming `--env-id`.
    """
    obs_space, act_space = env_spaces(args.env_id, args.env_backend)
    if not isinstance(act_space, gym.spaces.Discrete):
        raise UsageError(f"--env-id {args.env_id}: action space {act_space} is not Discrete (use ppo_continuous.py)")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise UsageError(f"--env-id {args.env_id}: observation space {obs_space} is not a flat Box")
    if args.capture_video:
        check_video(args)
    return obs_space, act_space


def env_spaces(env_id: str, backend: str) -> tuple[gym.Space, gym.Space]:
    """The (observation, action) spaces of one environment, without building the vector env.

    Raises:
        UsageError: unknown env id, an env that cannot be made, or envpool not installed.
    """
    if backend == "envpool":
        try:
            import envpool
        except ImportError:
            raise UsageError("--env-backend envpool needs envpool: pip install envpool") from None
        if env_id not in envpool.list_all_envs():
            raise UsageError(f"--env-id {env_id}: not an envpool environment")
        spec = envpool.make_spec(env_id)
        return spec.gymnasium_observation_space, spec.gymnasium_action_space
    try:
        env = gym.make(env_id)  # gymnasium's "module:EnvId" imports the module, which registers the env
    except (gym.error.UnregisteredEnv, gym.error.DeprecatedEnv, ModuleNotFoundError) as e:
        raise UsageError(f"--env-id {env_id}: not a registered gymnasium environment ({e})") from None
    except (gym.error.Error, ImportError) as e:  # DependencyNotInstalled; Pusher-v4 on mujoco>=3 (ImportError)
        raise UsageError(f"--env-id {env_id}: cannot be made ({str(e).splitlines()[0]})") from None
    env.close()
    return env.observation_space, env.action_space


def check_video(args: Args) -> None:
    """With `--capture-video`, render one frame before anything is written, so that a missing renderer (pygame,
    or an OpenGL backend for MuJoCo) is a one-line error rather than a crash at the first recorded episode.

    Raises:
        UsageError: naming `--capture-video`.
    """
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws off-screen: no SDL "XDG_RUNTIME_DIR" error
    try:
        env = gym.make(args.env_id, render_mode="rgb_array")
        env.reset(seed=args.seed)
        env.render()
        env.close()
    except Exception as e:
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise UsageError(
            f"--capture-video: {args.env_id} cannot render ({reason}); pip install moviepy pygame"
        ) from None


# ---- speed ----


def gumbel_noise(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise G = -log(E), E ~ Exponential(1), float32 of `shape`: argmax(logits + G) over the last
    dimension is a sample of Categorical(logits) (the Gumbel-max trick; Maddison et al. 2014, arXiv 1411.0030)."""
    return -torch.empty(shape, device=device).exponential_().log()


def compile_functions(args: Args, device: torch.device) -> tuple:
    """The policy step and the minibatch update that the rollout and ppo_update call: Agent.get_action and
    minibatch_step, or with `--compile` the minibatch update with its loss (ppo_loss: forward, and through
    AOTAutograd its backward) compiled by torch.compile as one graph, with dynamic shapes (the minibatch size changes
    with the number of reset steps left out of each batch); the optimizer step stays torch's fused Adam. On the CPU
    the policy step stays eager: for this small network a compiled call costs more than the eager forward."""
    if not args.compile:
        return Agent.get_action, minibatch_step
    # Python floats (the loss's coefficients) are baked into the graph: left dynamic, a warm compile cache can hand a
    # graph made with other values to a run (pytorch/pytorch#194976). kl_beta, which changes, comes as a tensor.
    torch._dynamo.config.specialize_float = True
    print("--compile: compiling the update, about 15 s the first time (a warm cache: less)", flush=True)
    policy = torch.compile(Agent.get_action) if device.type == "cuda" else Agent.get_action
    return policy, functools.partial(minibatch_step, loss_fn=torch.compile(ppo_loss, dynamic=True))


# ---- run plumbing: TRY NOT TO MODIFY (checks, run folder, logging, Ctrl-C, checkpoints and resume, evaluation) ----
# The same text in every script of ppo-single-file (a test compares them). What differs between the scripts comes
# from the script's own part above, by name: Args, CHECKPOINT_FORMAT, RESUME_FIXED, validate_args, check_env and
# evaluate. Under torchrun (WORLD_SIZE set) every process runs it; rank 0 alone writes and prints.


class UsageError(Exception):
    """Bad flags or files: reported as one line and a non-zero exit before any work starts."""


class TrainingError(Exception):
    """Training that cannot go on (a loss or parameter no longer finite): one line and a non-zero exit."""


def flag(name: str) -> str:
    """The command-line spelling of an Args field: `num_envs` -> `--num-envs`."""
    return "--" + name.replace("_", "-")


def check_extras(args: Args) -> None:
    """Raises UsageError, naming the flag and the package, when a package a flag needs is not installed."""
    for wanted, module, purpose in (
        (args.track, "wandb", "--track"),
        (args.capture_video, "moviepy", "--capture-video"),
    ):
        if wanted and importlib.util.find_spec(module) is None:
            raise UsageError(f"{purpose} needs {module}: pip install {module}")


class Run:
    """The plumbing of one training run, reached from main() through a few calls:

        run = Run.start(args)                       # checks: flags, packages, env, --resume file; writes nothing
        start_iteration, global_step = run.begin(train)   # resume into `train`, run folder, logging
        with run.training(envs):                    # Ctrl-C/SIGTERM checkpoint and stop; envs and logs close
            ... if run.end_iteration(iteration, global_step, lr, stats, episodes, train): break
            run.finish(agent, global_step)          # summary, final evaluation
        return run.record

    `train` is what a checkpoint holds besides the flags and progress: objects with a state_dict (agent,
    optimizer) are saved and loaded through it, lists (of tensors: the actions taken) are saved concatenated, any
    other value (floats, tuples, tensors) as it is.
    """

    def __init__(self, args: Args, ckpt: dict | None, spaces: tuple):
        self.args, self.ckpt, self.spaces = args, ckpt, spaces
        self.rank, self.world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        self.name = self.dir = self.log = None
        self.saved, self.stop, self.record = False, None, {}

    @classmethod
    def start(cls, args: Args) -> "Run":
        """Check the flags, the packages they need, the env (check_env: its spaces become `run.spaces`) and the
        --resume file with the flags it fixes, before any work. Raises UsageError, naming the flag or file."""
        for f in fields(args):  # nan and infinities pass every comparison check: refused here for every float flag
            if isinstance(getattr(args, f.name), float) and not math.isfinite(getattr(args, f.name)):
                raise UsageError(f"{flag(f.name)} must be a finite number, got {getattr(args, f.name)}")
        validate_args(args)
        check_extras(args)
        ckpt = load_checkpoint(args.resume) if args.resume else None
        if ckpt is not None:
            check_resume(args, ckpt)
        return cls(args, ckpt, check_env(args))

    def begin(self, train: dict) -> tuple[int, int]:
        """Load a --resume checkpoint into `train` (and this process's RNG state), claim the run folder, start
        logging; a finished run with nothing left to train writes nothing. Returns (first iteration, global_step).
        Raises UsageError (nothing written): a checkpoint that does not fit `train`, a path that cannot be written."""
        args, ckpt = self.args, self.ckpt
        start_iteration, global_step = 1, 0
        if ckpt is not None:
            for key, value in train.items():
                if hasattr(value, "load_state_dict"):
                    try:
                        value.load_state_dict(ckpt[key])
                    except (RuntimeError, ValueError, KeyError) as e:
                        reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
                        raise UsageError(
                            f"--resume {args.resume}: its {key} does not fit this run's: {reason}"
                        ) from None
                else:
                    train[key] = [ckpt[key]] if isinstance(value, list) else ckpt[key]
            rng = ckpt["rng"][self.rank]
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
            start_iteration, global_step = ckpt["iteration"] + 1, ckpt["global_step"]
        evaluate_only = ckpt is not None and ckpt["iteration"] >= args.num_iterations
        self.name = ckpt["run_name"] if ckpt else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
        self.dir = f"runs/{self.name}"
        if not evaluate_only:  # rank 0 claims the folder; every process learns its name, or the error
            outcome = [None]
            if self.rank == 0:
                try:
                    outcome[0] = prepare_run_dir(args, self.name, new=ckpt is None)
                except UsageError as e:
                    outcome[0] = str(e)
            if dist.is_initialized():
                dist.broadcast_object_list(outcome, src=0)
            if isinstance(outcome[0], str):
                raise UsageError(outcome[0])
            self.name, self.dir = outcome[0]
        try:
            self.log = RunLog(args, self.name, self.dir, ckpt, evaluate_only, self.rank, self.world_size)
        except UsageError:  # W&B cannot log in: a new run leaves no folder behind
            unlock_run_dir(self.dir)
            if ckpt is None and self.rank == 0:
                shutil.rmtree(self.dir, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.removedirs(os.path.dirname(self.dir))
            raise
        return start_iteration, global_step

    @contextlib.contextmanager
    def training(self, envs=None):
        """Around the training loop: with --save-model a first Ctrl-C or SIGTERM is noted (end_iteration checkpoints
        and stops), a second stops at once with a one-line KeyboardInterrupt; the envs and logs close at the end."""
        self.stop = StopSignals(self.args.save_model)
        self.log.start()
        self.global_step = self.log.start_step
        try:
            yield self
        except KeyboardInterrupt:
            self.log.end_progress()
            at, path = f"at global_step={self.global_step}", f"{self.dir}/checkpoint.pt"
            if not self.args.save_model:
                raise KeyboardInterrupt(
                    f"interrupted {at}; nothing saved (with --save-model, Ctrl-C saves a checkpoint to resume from)"
                ) from None
            resume = f"; {path} resumes from the last one saved" if os.path.isfile(path) else ""
            raise KeyboardInterrupt(f"stopped at once {at}{resume}") from None
        finally:
            self.stop.restore()
            if envs is not None:
                envs.close()
            self.log.close()
            unlock_run_dir(self.dir)
            if dist.is_initialized():
                dist.destroy_process_group()

    def end_iteration(
        self, iteration: int, global_step: int, lr: float, stats: dict | None, episodes: list, train: dict
    ) -> bool:
        """Log the iteration (`episodes`: [(global_step, return, length)]), checkpoint when due (the last iteration,
        every --checkpoint-every, a signal), and say whether to stop now (a signal arrived). Under torchrun every
        process calls it: all the episodes go to rank 0's log, and all the processes stop together."""
        self.global_step = global_step
        received = self.stop.received
        if dist.is_initialized():  # every process's episodes, and the signal any of them has received so far
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, (episodes, received))
            episodes = sorted(e for process_episodes, _ in gathered for e in process_episodes)
            received = next((r for _, r in gathered if r), None)
            self.stop.received = self.stop.received or received
        last = iteration == self.args.num_iterations
        self.log.iteration(global_step, lr, stats, episodes, last)
        bad = non_finite(stats, train)
        if bad is not None:  # before any checkpoint: the last one saved stays the last good one
            self.log.end_progress()
            kept = os.path.isfile(f"{self.dir}/checkpoint.pt") and f"; {self.dir}/checkpoint.pt is the last good one"
            raise TrainingError(f"iteration {iteration}: {bad} is not finite, training stopped{kept or ''}")
        every = self.args.checkpoint_every
        if self.args.save_model and (last or (every and iteration % every == 0) or received):
            state = checkpoint_state(self, iteration, global_step, train)  # every process: it gathers their RNGs
            if self.rank == 0:
                save_checkpoint(f"{self.dir}/checkpoint.pt", state)
            self.saved = True
        if received:
            self.log.end_progress()
            if self.rank == 0:
                print(f"{received}: stopped after iteration {iteration}; resume with --resume {self.dir}/checkpoint.pt")
        return bool(received)

    def finish(self, agent: nn.Module, global_step: int) -> None:
        """Print the last returns and the checkpoint's path, evaluate with --eval-episodes (not after a stop), and
        fill `run.record`: run_name, run_dir, history, episodes, eval (mean returns) and agent."""
        self.stop.restore()  # training is over: a signal now stops at once
        self.global_step = global_step
        self.log.summary(global_step)
        if self.saved and self.rank == 0:
            print(f"checkpoint saved to {self.dir}/checkpoint.pt", flush=True)
        device = next(agent.parameters()).device
        result = {}
        if not self.stop.received and self.rank == 0:
            self.log.upload_videos()
            for mode in ("sampled", "greedy") if self.args.eval_episodes else ():
                returns = evaluate(agent, self.args, self.args.eval_episodes, greedy=mode == "greedy", device=device)
                self.log.evaluation(mode, returns)
                result[mode] = float(returns.mean())
        self.record.update(run_name=self.name, run_dir=self.dir, history=self.log.history)
        self.record.update(episodes=self.log.episodes, eval=result, agent=agent)


class RunLog:
    """TensorBoard scalars under CleanRL's tags (W&B syncs them with --track, and gets the videos), a progress bar
    (a line every 10 s off a terminal), and the record: `history` (scalars per iteration), `episodes` (global_step,
    return, length). Under torchrun only rank 0 writes and prints."""

    def __init__(self, args: Args, run_name: str, run_dir: str, ckpt, evaluate_only: bool, rank: int, world_size: int):
        self.args, self.run_name, self.history, self.uploaded_videos = args, run_name, [], set()
        self.episodes = [tuple(e) for e in ckpt["episodes"]] if ckpt else []
        self.wandb_run, self.writer, self.bar, self.last_print, self.rank = None, None, None, 0.0, rank
        self.start_step = ckpt["global_step"] if ckpt else 0
        if evaluate_only or rank != 0:
            if evaluate_only and ckpt is not None and rank == 0:  # nothing left to train
                print(
                    f"--resume: the checkpoint has trained {ckpt['global_step']} steps, --total-timesteps "
                    f"{args.total_timesteps} asks no more: nothing to train (a larger --total-timesteps trains on)",
                    flush=True,
                )
            return
        print(f"logging to {run_dir} (see it with: tensorboard --logdir runs)", flush=True)
        if ckpt is not None:
            print(f"resumed from iteration {ckpt['iteration']} (global_step {ckpt['global_step']})", flush=True)
        batch = args.batch_size * world_size  # steps per iteration, all processes together
        if args.total_timesteps % batch:
            print(
                f"--total-timesteps {args.total_timesteps} is not a multiple of the batch size {batch}: "
                f"training {args.num_iterations * batch} steps ({args.num_iterations} iterations)",
                flush=True,
            )
        config = {**asdict(args), "batch_size": args.batch_size, "num_iterations": args.num_iterations}
        config.update(world_size=world_size)
        if args.track:
            import wandb

            try:
                self.wandb_run = wandb.init(
                    project=args.wandb_project_name,
                    entity=args.wandb_entity,
                    sync_tensorboard=True,
                    config=config,
                    name=run_name,
                    id=ckpt.get("wandb_id") if ckpt else None,
                    resume="allow",
                    save_code=True,
                )
            except wandb.errors.UsageError as e:  # no API key: wandb's own message says how to log in
                raise UsageError(f"--track: {str(e).splitlines()[0]} (or set WANDB_MODE=offline)") from None
        self.writer = SummaryWriter(run_dir, purge_step=ckpt["global_step"] + 1 if ckpt else None)
        self.writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in config.items()])),
        )
        if sys.stderr.isatty():
            total = args.num_iterations * batch
            self.bar = tqdm(total=total, initial=self.start_step, unit="step", dynamic_ncols=True)

    def start(self) -> None:
        """Start the SPS clock: SPS counts the training loop only, as CleanRL's."""
        self.start_time = time.time()

    def iteration(self, global_step: int, lr: float, stats: dict, episodes: list, last: bool) -> None:
        """Record one iteration: the episodes that ended in it, the learning rate, SPS and the update's `stats`
        (tags with a / as they are, minibatch_updates as charts/, the others as losses/; None: only the episodes)."""
        self.episodes.extend(episodes)
        sps = int((global_step - self.start_step) / (time.time() - self.start_time))
        scalars = {}
        if stats is not None:
            scalars = {"charts/learning_rate": lr, "charts/SPS": sps}
            tags = {k: k if "/" in k else ("charts/" if k == "minibatch_updates" else "losses/") + k for k in stats}
            scalars.update({tags[k]: v for k, v in stats.items()})
            self.history.append(scalars)
        if self.writer is not None:
            for step_, episodic_return, episodic_length in episodes:
                self.writer.add_scalar("charts/episodic_return", episodic_return, step_)
                self.writer.add_scalar("charts/episodic_length", episodic_length, step_)
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, global_step)
            self.upload_videos()

        recent = [e[1] for e in self.episodes[-20:]]
        if self.bar is not None:
            self.bar.update(global_step - self.bar.n)
            self.bar.set_postfix(SPS=sps, ret=f"{np.mean(recent):.1f}" if recent else "-", refresh=False)
        elif self.rank == 0 and (time.time() - self.last_print > 10 or last):
            self.last_print = time.time()
            mean_return = f"{np.mean(recent):.1f}" if recent else "-"
            print(f"global_step={global_step} SPS={sps} return(last {len(recent)} episodes)={mean_return}", flush=True)

    def upload_videos(self) -> None:
        """With --track, log each new .mp4 of videos/{run_name} to W&B (wandb's monitor_gym fails on gymnasium 1.x)."""
        video_dir = f"videos/{self.run_name}"
        if self.wandb_run is None or not self.args.capture_video or not os.path.isdir(video_dir):
            return
        import wandb

        for name in sorted(set(os.listdir(video_dir)) - self.uploaded_videos):
            if name.endswith(".mp4"):
                self.wandb_run.log({"videos": wandb.Video(os.path.join(video_dir, name), format="mp4")})
                self.uploaded_videos.add(name)

    def evaluation(self, mode: str, returns: np.ndarray) -> None:
        """Print and log (eval/episodic_return, or eval/episodic_return_greedy) one evaluation's returns."""
        tag = "eval/episodic_return" + ("_greedy" if mode == "greedy" else "")
        for idx, episodic_return in enumerate(returns if self.writer is not None else []):
            self.writer.add_scalar(tag, episodic_return, idx)
        print(f"eval ({mode}, {len(returns)} episodes): mean return {returns.mean():.2f} +- {returns.std():.2f}")

    def summary(self, global_step: int) -> None:
        """Close the progress bar and print the mean of the last 100 returns."""
        self.end_progress()
        recent = [e[1] for e in self.episodes[-100:]]
        summary = f"{np.mean(recent):.2f} (last {len(recent)} episodes)" if recent else "- (no episode finished)"
        if self.rank == 0:
            print(f"finished at global_step={global_step}: mean return {summary}", flush=True)

    def end_progress(self) -> None:
        """Close the progress bar, so that a line printed now starts on a line of its own."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.end_progress()
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (a cluster's preemption notice) during training, with `--save-model`: the first
    one is noted in `received` (the loop finishes the iteration, checkpoints and stops; --resume continues exactly),
    a second one stops at once (KeyboardInterrupt). Without --save-model, or outside the main thread, Python's
    handlers stay: Ctrl-C stops at once."""

    def __init__(self, enabled: bool):
        self.received, self.previous = None, {}
        if enabled and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.request_stop)

    def request_stop(self, signum, frame):
        if self.received:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        tqdm.write(f"{self.received}: stopping after this iteration to save a checkpoint (again: stop at once)")

    def restore(self) -> None:
        """Put the previous handlers back: after training a signal stops at once."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


def checkpoint_state(run: Run, iteration: int, global_step: int, train: dict) -> dict:
    """What --save-model saves after `iteration`: the format, flags, progress, every process's RNG states (gathered
    under torchrun, so that each resumes its own), the episodes, the W&B run id, and `train` (see Run)."""
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    rngs = [rng]
    if dist.is_initialized():
        rngs = [None] * run.world_size
        dist.all_gather_object(rngs, rng)
    state = {"format": CHECKPOINT_FORMAT, "args": asdict(run.args), "run_name": run.name, "iteration": iteration}
    state.update(global_step=global_step, world_size=run.world_size, rng=rngs)
    state.update(episodes=[list(e) for e in run.log.episodes], wandb_id=run.log.wandb_run and run.log.wandb_run.id)
    for key, value in train.items():
        state[key] = value.state_dict() if hasattr(value, "state_dict") else value
        if isinstance(value, list):
            state[key] = torch.cat(value)
    return state


def non_finite(stats: dict | None, train: dict) -> str | None:
    """The name of the first loss in `stats` (keys with "loss") or parameter of a module in `train` that is nan or
    infinite; None when all are finite. One host sync for all the parameters."""
    for name, value in (stats or {}).items():
        if "loss" in name and isinstance(value, float) and not math.isfinite(value):
            return name
    modules = [(key, module) for key, module in train.items() if isinstance(module, nn.Module)]
    params = [(f"{key}.{name}", p) for key, module in modules for name, p in module.named_parameters()]
    if params and not torch.stack([p.detach().isfinite().all() for _, p in params]).all():
        return next(name for name, p in params if not p.detach().isfinite().all())
    return None


def save_checkpoint(path: str, state: dict) -> None:
    """torch.save to a temporary file, fsync'ed, renamed over `path`: a crash mid-write keeps the last checkpoint.
    Raises TrainingError naming the path when it cannot be written (a full disk, a read-only file system)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        kept = " (the last checkpoint there is kept)" if os.path.isfile(path) else ""
        raise TrainingError(f"cannot write {os.path.abspath(path)}: {reason}{kept}") from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def load_checkpoint(path: str) -> dict:
    """A checkpoint of this script, with torch.load(weights_only=True). Raises UsageError naming --resume and the
    file: missing, a directory, corrupt, holding arbitrary objects, not this script's or of an older version."""
    if os.path.isdir(path):
        raise UsageError(f"--resume {path}: is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise UsageError(f"--resume {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Unsupported global" in str(e):  # weights_only refused to unpickle an arbitrary object
            raise UsageError(f"--resume {path}: holds Python objects that no checkpoint contains; not loaded") from None
        raise UsageError(f"--resume {path}: cannot be read: the file is corrupt or truncated") from None
    script = CHECKPOINT_FORMAT.split(" checkpoint ")[0]  # the script this file was copied from: a renamed copy's too
    if not isinstance(ckpt, dict) or not str(ckpt.get("format")).startswith(f"{script} checkpoint "):
        raise UsageError(f"--resume {path}: not a checkpoint of this script ({script})")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise UsageError(
            f"--resume {path}: written by an older version of this script ({ckpt['format']}); start a new run"
        )
    return ckpt


def check_resume(args: Args, ckpt: dict) -> None:
    """A resumed run keeps the checkpoint's RESUME_FIXED flags (they make its env and agent) and number of torchrun
    processes. Raises UsageError naming the first that differs."""
    for name in RESUME_FIXED:
        if getattr(args, name) != ckpt["args"][name]:
            raise UsageError(
                f"{flag(name)} {getattr(args, name)} differs from the checkpoint's {ckpt['args'][name]}: "
                "a resumed run keeps the environment and agent it was built with"
            )
    if ckpt["world_size"] != int(os.environ.get("WORLD_SIZE", "1")):
        raise UsageError(
            f"--resume {args.resume}: saved by {ckpt['world_size']} process(es), resumed by "
            f"{os.environ.get('WORLD_SIZE', '1')}: a resumed run keeps its number of torchrun processes"
        )


def prepare_run_dir(args: Args, run_name: str, new: bool) -> tuple[str, str]:
    """Claim runs/{run_name} with os.mkdir (atomic: a name already taken becomes {run_name}-2, -3, ...; a resumed
    run keeps its folder) and probe every folder the run writes (videos/ with --capture-video, W&B's with --track).
    Returns (run_name, run_dir). Raises UsageError naming the path and why; the folders made here are removed."""
    base, suffix, made, path = run_name, 1, [], os.path.dirname(f"runs/{run_name}")
    try:
        os.makedirs(path, exist_ok=True)  # runs/, and a namespace's folder for env ids like "ALE/Pong-v5"
        while new:
            try:
                os.mkdir(f"runs/{run_name}")
                made.append(f"runs/{run_name}")
                break
            except FileExistsError:
                suffix += 1
                run_name = f"{base}-{suffix}"
        run_dir = f"runs/{run_name}"
        folders = (
            [run_dir] + [f"videos/{run_name}"] * args.capture_video + [os.environ.get("WANDB_DIR", ".")] * args.track
        )
        for path in folders:
            if not os.path.isdir(path):
                os.makedirs(path)
                made.append(path)
            tempfile.TemporaryFile(dir=path).close()  # a probe: the folder takes a new file
        for folder in made:
            if folder != run_dir:
                os.removedirs(folder)  # only probed: RecordVideo and wandb make their folders themselves
    except OSError as e:
        for folder in reversed(made):
            shutil.rmtree(folder, ignore_errors=True)
        reason = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
        raise UsageError(f"cannot write {os.path.abspath(path)}: {reason}") from None
    if args.save_model and os.path.isdir(f"{run_dir}/checkpoint.pt"):
        raise UsageError(f"cannot write {os.path.abspath(run_dir)}/checkpoint.pt: is a directory")
    lock_run_dir(run_dir)
    return run_name, run_dir


RUN_DIR_LOCKS: dict = {}  # run folder -> the open file whose lock claims it for this process's run


def lock_run_dir(run_dir: str) -> None:
    """Claim `run_dir` for this run with an exclusive fcntl.flock on its .lock file, held until unlock_run_dir (or
    the process ends: the system releases it). Raises UsageError when another run holds it (two resumes of one
    checkpoint at once would overwrite each other's checkpoint and mix their curves). No lock where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows
        return
    lock = open(f"{run_dir}/.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise UsageError(f"{os.path.abspath(run_dir)} is in use by another run: resume it once at a time") from None
    RUN_DIR_LOCKS[run_dir] = lock


def unlock_run_dir(run_dir: str | None) -> None:
    """Release lock_run_dir's claim on `run_dir`, if this process holds one."""
    lock = RUN_DIR_LOCKS.pop(run_dir, None)
    if lock is not None:
        lock.close()


def parse_args(argv: list[str]) -> Args:
    """tyro CLI; with `--resume PATH`, the checkpoint's flags are the defaults that the command line overrides."""
    resume = None
    for i, arg in enumerate(argv):
        if arg.startswith("--resume="):
            resume = arg.split("=", 1)[1]
        elif arg == "--resume" and i + 1 < len(argv):
            resume = argv[i + 1]
    default = Args()
    if resume not in (None, "None"):
        saved = load_checkpoint(resume)["args"]
        default = Args(**{f.name: saved[f.name] for f in fields(Args) if f.name in saved})
    return tyro.cli(Args, args=argv, default=default)


if __name__ == "__main__":
    try:
        main(parse_args(sys.argv[1:]))
    except (UsageError, TrainingError) as e:
        sys.exit(f"{os.path.basename(__file__)}: error: {e}")
    except KeyboardInterrupt as e:  # Ctrl-C: one line, no traceback
        print(f"{os.path.basename(__file__)}: {e or 'interrupted'}", file=sys.stderr)
        sys.exit(130)
