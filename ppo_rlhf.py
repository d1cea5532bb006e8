# PPO for language models (RLHF, as InstructGPT): a small GPT pre-trained on a synthetic review language, then tuned
# by PPO against a reward with a per-token KL penalty to the frozen reference; one file of the ppo-single-file project
# that runs on its own when copied. Needs: pip install torch numpy tyro tensorboard tqdm (--track: wandb; --model-name: transformers).
# Sources: Ouyang et al. 2022 (InstructGPT, arXiv 2203.02155); Ziegler et al. 2019
# (arXiv 1909.08593, the adaptive KL controller); Huang et al. 2024, "The N Implementation Details of RLHF with PPO"
# (arXiv 2403.17031); TRL's PPO trainer (v0.11 and trl.experimental.ppo); Shao et al. 2024 (DeepSeekMath, GRPO).
import contextlib
import copy
import importlib.util
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

CHECKPOINT_FORMAT = "ppo_rlhf.py checkpoint v2"  # v2: the learning-rate schedule (lr_schedule)
# Flags a resumed run must keep: they make its task and model, or change what its saved model computes.
RESUME_FIXED = ("env_id", "seed", "n_layer", "d_model", "n_head", "response_length", "critic")
RESUME_FIXED += ("model_name", "reward_model_name")


@dataclass
class Args:
    # Algorithm specific arguments
    env_id: str = "synthetic-reviews"
    """the task: the synthetic review language built into this script (the only one)"""
    total_timesteps: int = 6400
    """total episodes (prompt-response pairs) of PPO: num_iterations = total_timesteps // num_prompts"""
    num_prompts: int = 64
    """prompts per iteration (the batch of episodes)"""
    response_length: int = 16
    """tokens generated per prompt (a response that has not ended by then gets --missing-eos-penalty)"""
    temperature: float = 0.7
    """sampling temperature; the logits are divided by it everywhere (rollout, reference, update)"""
    learning_rate: float = 5e-5
    """Adam learning rate of the policy (and value head or critic)"""
    anneal_lr: bool = False
    """linear learning-rate decay to 0 over the iterations"""
    update_epochs: int = 4
    """passes over the batch per iteration"""
    num_minibatches: int = 4
    """minibatches per epoch"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    target_kl: float | None = 0.01
    """the update phase stops before a minibatch whose policy/approxkl_avg is above this (None: never)"""
    loss_agg: Literal["token", "sequence"] = "token"
    """how the per-token policy loss (and GRPO's KL term) is averaged over a minibatch: "token", over all its valid
    tokens (TRL's PPO, DAPO); "sequence", each response's mean over its tokens, then over responses (GRPO's eq. 3)"""
    clip_vloss: bool = True
    """clip the value loss as in PPO (range --vf-clip-coef)"""
    vf_clip_coef: float = 0.2
    """the value clipping range"""
    vf_coef: float = 0.1
    """coefficient of the value loss"""
    max_grad_norm: float = 1.0
    """the maximum norm for the gradient clipping"""
    gamma: float = 1.0
    """the discount over tokens"""
    gae_lambda: float = 0.95
    """GAE's lambda over tokens"""
    kl_coef: float = 0.1
    """the KL penalty's coefficient beta (the start value with --adaptive-kl)"""
    kl_estimator: Literal["k1", "k3"] | None = None
    """the per-token KL estimate: k1 = log pi - log pi_ref; k3 = (r - 1) - log r with r = pi_ref / pi (>= 0). None:
    k1 in the reward for --advantage gae, k3 in the loss for grpo (the only one there: k1's gradient is 0 on average)"""
    adaptive_kl: bool = False
    """Ziegler et al.'s adaptive controller: beta follows --kl-target with horizon --kl-horizon"""
    kl_target: float = 3.0
    """the adaptive controller's target for the mean sequence KL (nats)"""
    kl_horizon: int = 10000
    """the adaptive controller's horizon (episodes)"""
    missing_eos_penalty: float = 1.0
    """subtracted from the score of a response with no EOS token"""
    whiten_rewards: bool = False
    """whiten the per-token rewards over the batch's valid tokens before GAE"""
    critic: Literal["shared", "separate"] = "separate"
    """a critic transformer of its own (as TRL), or a value head on the policy's backbone (less stable, measured)"""
    advantage: Literal["gae", "grpo"] = "gae"
    """PPO's token GAE with a critic, or GRPO's group-normalised sequence advantage with the k3 KL in the loss
    (--kl-coef, adapted with --adaptive-kl); GRPO refuses the critic's and the token rewards' flags"""
    group_size: int = 4
    """GRPO: samples per prompt (num_prompts must be a multiple)"""
    reward: Literal["gold", "model"] = "gold"
    """the reward: the programmatic gold score, or a Bradley-Terry reward model trained on synthetic preferences"""
    n_layer: int = 2
    """transformer layers"""
    d_model: int = 64
    """transformer width"""
    n_head: int = 4
    """attention heads"""
    pretrain_steps: int = 600
    """supervised steps that make the reference policy (batch 64 sentences of the grammar)"""
    reward_model_steps: int = 300
    """with --reward model: Bradley-Terry steps (batch 64 preference pairs)"""
    model_name: str | None = None
    """a transformers causal LM (hub id or folder) instead of the built-in GPT, with its tokenizer (needs
    transformers); pre-trained on the grammar for --pretrain-steps (0: used as it is)"""
    reward_model_name: str | None = None
    """with --reward model and --model-name: a transformers sequence-classification model (1 label, the policy's
    tokenizer) as the reward model, used as it is (no Bradley-Terry training)"""

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
    """torch CPU threads (1 is fastest for this small model)"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "cleanRL"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    sample_every: int = 20
    """log a table of sample responses every this many iterations (TensorBoard text)"""
    save_model: bool = False
    """whether to save a checkpoint to `runs/{run_name}/checkpoint.pt` at the end (and every `--checkpoint-every` iterations)"""
    checkpoint_every: int = 0
    """with `--save-model`, also checkpoint every this many iterations (0: only at the end)"""
    resume: str | None = None
    """path of a checkpoint of this script to continue from (its flags become the defaults)"""
    eval_episodes: int = 0
    """after training, score this many responses to held-out prompts, sampled and greedy (0: no evaluation)"""

    @property
    def batch_size(self) -> int:
        """episodes per iteration (num_prompts)"""
        return self.num_prompts

    @property
    def num_iterations(self) -> int:
        """the number of iterations (total_timesteps // num_prompts)"""
        return self.total_timesteps // self.num_prompts

    @property
    def capture_video(self) -> bool:
        """no videos of text: False (what the shared run plumbing reads)"""
        return False


# ---- the task: a synthetic review language --------------------------------------------------------------------
SPECIALS = ["<pad>", "<bos>", "<eos>"]
NOUNS = [
    "movie",
    "film",
    "plot",
    "actor",
    "story",
    "music",
    "ending",
    "scene",
    "book",
    "show",
    "cast",
    "song",
    "script",
]
VERBS = ["is", "was", "seems", "feels", "looks"]
POSITIVE = ["good", "great", "wonderful", "brilliant", "lovely", "fun"]
NEGATIVE = ["bad", "awful", "boring", "dull", "terrible", "weak"]
NEUTRAL = ["long", "short", "old", "new", "loud", "quiet"]
VOCAB = SPECIALS + ["the", ".", "very", "and", "but"] + NOUNS + VERBS + POSITIVE + NEGATIVE + NEUTRAL
TOKEN = {word: i for i, word in enumerate(VOCAB)}
PAD, BOS, EOS = TOKEN["<pad>"], TOKEN["<bos>"], TOKEN["<eos>"]
ADJECTIVES = POSITIVE + NEGATIVE + NEUTRAL
PROMPT_LENGTH = 3  # <bos> the NOUN: the policy continues the first sentence from its verb


def make_prompts(num: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """[num, 3] int64 prompts `<bos> the NOUN`, the noun uniform (from `generator`, or torch's global RNG)."""
    nouns = torch.tensor([TOKEN[n] for n in NOUNS], device=device)
    choice = nouns[torch.randint(len(NOUNS), (num,), generator=generator).to(device)]
    start = torch.tensor([BOS, TOKEN["the"]], device=device).expand(num, 2)
    return torch.cat([start, choice[:, None]], 1)


class Vocabulary:
    """The review language in a model's token ids: the words above, or (--model-name) the model's transformers
    tokenizer, given a pad token distinct from its EOS when it has none (as TRL) and prompts padded on the left."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        if tokenizer is None:
            self.size, self.pad, self.eos = len(VOCAB), PAD, EOS
            return
        if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        tokenizer.padding_side = "left"
        self.size, self.pad, self.eos = len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id

    def prompts(self, num: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """[num, P] int64 prompts `<bos> the NOUN` (a tokenizer's `the NOUN`, left-padded), the noun uniform."""
        if self.tokenizer is None:
            return make_prompts(num, generator, device)
        nouns = torch.randint(len(NOUNS), (num,), generator=generator).tolist()
        text = [f"the {NOUNS[i]}" for i in nouns]
        return self.tokenizer(text, return_tensors="pt", padding=True).input_ids.to(device)

    def encode(self, reviews: list[list[str]], device: torch.device) -> torch.Tensor:
        """[num, T] int64: each review (words from `the`) then EOS, right-padded (T >= 19): pre-training data."""
        if self.tokenizer is None:
            rows = [[BOS] + [TOKEN[w] for w in review] + [EOS] for review in reviews]
        else:
            rows = [self.tokenizer(" ".join(review)).input_ids + [self.eos] for review in reviews]
        width = max(PROMPT_LENGTH + 16, *map(len, rows))
        return torch.tensor([row + [self.pad] * (width - len(row)) for row in rows], device=device)

    def words(self, tokens: list[int]) -> list[str]:
        """The words of one prompt + response, pads and <bos> dropped, "<eos>" last if it has one (as the parser and
        the gold score read them)."""
        if self.tokenizer is None:
            return [w for w in decode(tokens) if w != "<bos>"]
        ids = [t for t in tokens if t != self.pad]
        start = int(bool(ids) and ids[0] == self.tokenizer.bos_token_id)
        end = ids.index(self.eos, start) if self.eos in ids[start:] else len(ids)
        text = self.tokenizer.decode(ids[start:end], skip_special_tokens=True)
        return re.findall(r"[^\s.]+|\.", text) + ["<eos>"] * (end < len(ids))


# ---- the network ----------------------------------------------------------------------------------------------
class Block(nn.Module):
    """A pre-LayerNorm transformer block (GPT-2's): causal multi-head self-attention and a 4x GELU MLP."""

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.ln1, self.ln2, self.n_head = nn.LayerNorm(d_model), nn.LayerNorm(d_model), n_head
        self.qkv, self.proj = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attention.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A small causal transformer: token and position embeddings, `n_layer` blocks, a final LayerNorm. forward:
    tokens [B, T] int64 -> hidden states [B, T, d_model]. No dropout (RLHF's ratios must be 1 at the start)."""

    def __init__(self, vocab_size: int, n_layer: int, d_model: int, n_head: int, max_len: int = 64):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab_size, d_model), nn.Embedding(max_len, d_model)
        self.blocks = nn.Sequential(*[Block(d_model, n_head) for _ in range(n_layer)])
        self.ln = nn.LayerNorm(d_model)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.ln(self.blocks(self.tok(tokens) + self.pos(positions)))


class Agent(nn.Module):
    """The policy (a GPT and its LM head) with its value function: a zero-initialised value head on the policy's
    backbone (`critic` "shared"), or a separate GPT with its own value head ("separate"); none for GRPO. Every use
    of the model goes through its methods, so another network is an edit in this class."""

    def __init__(self, args: Args):
        super().__init__()
        self.temperature, self.model_name = args.temperature, args.model_name
        self.vocab = Vocabulary(load_transformers("AutoTokenizer", args.model_name) if args.model_name else None)
        separate = args.advantage == "gae" and args.critic == "separate"
        self.critic = None
        if args.model_name is None:
            self.backbone = GPT(self.vocab.size, args.n_layer, args.d_model, args.n_head)
            self.lm_head = nn.Linear(args.d_model, self.vocab.size, bias=False)
            self.critic = GPT(self.vocab.size, args.n_layer, args.d_model, args.n_head) if separate else None
            width = args.d_model
        else:  # a transformers causal LM: its hidden states are the backbone's, its logits the LM head's
            self.lm = load_transformers("AutoModelForCausalLM", args.model_name, self.vocab)
            self.critic = (
                load_transformers("AutoModel", args.model_name, self.vocab) if separate else None
            )  # no LM head
            width = self.lm.config.hidden_size
        self.value_head = nn.Linear(width, 1) if args.advantage == "gae" else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward_lm(self, tokens):
        """(hidden states [B, T, H], raw next-token logits [B, T, V]) of the policy for tokens [B, T]."""
        if self.model_name is None:
            hidden = self.backbone(tokens)
            return hidden, self.lm_head(hidden)
        out = transformers_forward(self.lm, tokens, self.vocab.pad)
        return out.hidden_states[-1], out.logits

    def logits(self, tokens):
        """Next-token logits [B, T, V] divided by the temperature, for tokens [B, T]."""
        return self.forward_lm(tokens)[1] / self.temperature

    def get_action_and_value(self, query_responses, context: int):
        """For sequences [B, P + R] (P = `context` prompt tokens): (log pi(r_t | ...) [B, R], entropy [B, R], V [B, R]
        (None without a critic)), at the sampling temperature. Position P - 1 + t predicts response token t."""
        hidden, logits = self.forward_lm(query_responses)
        logp_all = torch.log_softmax(logits[:, context - 1 : -1] / self.temperature, -1)
        logprob = logp_all.gather(-1, query_responses[:, context:, None]).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logprob, entropy, self.get_value(query_responses, context, hidden)

    def get_value(self, query_responses, context: int, hidden=None):
        """V at each response position [B, R] (the value of the state before token t), or None without a critic."""
        if self.value_head is None:
            return None
        if self.critic is not None and self.model_name is None:
            hidden = self.critic(query_responses)
        elif self.critic is not None:
            hidden = transformers_forward(self.critic, query_responses, self.vocab.pad).hidden_states[-1]
        elif hidden is None:
            hidden = self.forward_lm(query_responses)[0]
        return self.value_head(hidden[:, context - 1 : -1]).squeeze(-1)

    @torch.no_grad()
    def generate(self, prompts, length: int, generator: torch.Generator | None = None, greedy: bool = False):
        """Sample `length` tokens after prompts [B, P] at the temperature, no top-k or top-p (greedy: argmax), from
        `generator` or torch's RNG; a transformers model through its `generate` (KV cache), stopping at EOS. Returns
        [B, P + length] int64 (after an EOS anything: the rollout truncates)."""
        if self.model_name is not None:
            return transformers_generate(self, prompts, length, generator, greedy)
        tokens = prompts
        for _ in range(length):
            logits = self.logits(tokens)[:, -1]
            if greedy:
                token = logits.argmax(-1)
            else:
                token = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
            tokens = torch.cat([tokens, token[:, None]], 1)
        return tokens


def main(args: Args) -> dict:
    """Pre-train the reference (and the reward model), then PPO as `args` says. Returns the run's record
    (Run.finish): run_name, run_dir, history, episodes (one per response: global_step, score, length), eval and
    the trained agent.

    Raises:
        UsageError: bad flags or `--resume` file, before anything is built or written.
    """
    run = Run.start(args)  # checks the flags and a --resume file, before anything is built or written

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    agent = Agent(args).to(device)
    reward_model = RewardModel(args, agent.vocab).to(device) if args.reward == "model" else None
    if run.ckpt is None:  # stage 1 (and 2): the reference policy, and the reward model, from the grammar
        pretrain(agent, args, device)
        if reward_model is not None and args.reward_model_name is None:
            train_reward_model(reward_model, agent, args, device)
    reference = copy.deepcopy(agent).requires_grad_(False)  # the frozen reference policy
    agent.reference = [reference]  # for the final evaluation's KL (in a list: not a submodule of the agent)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)  # see "speed"
    # What a checkpoint saves besides the flags and progress (the reference too: a resumed run does not pre-train).
    train = {"agent": agent, "reference": reference, "optimizer": optimizer, "kl_coef": args.kl_coef}
    train["lr_schedule"] = (1, args.learning_rate)  # where the learning-rate decay starts (iteration, rate)
    if reward_model is not None:
        train["reward_model"] = reward_model
    start_iteration, global_step = run.begin(train)  # a --resume checkpoint is loaded into `train` here
    if run.ckpt is not None:
        train["lr_schedule"] = resumed_lr_schedule(run.ckpt, args)

    with run.training(envs=None):  # Ctrl-C and SIGTERM checkpoint and stop; the logs close at the end
        for iteration in range(start_iteration, args.num_iterations + 1):
            lrnow = args.learning_rate
            if args.anneal_lr:  # Annealing the rate if instructed to do so.
                lrnow = annealed_lr(iteration, args.num_iterations, train["lr_schedule"][1], train["lr_schedule"][0])
            optimizer.param_groups[0]["lr"] = lrnow

            batch, episodes = rollout(agent, reference, reward_model, args, train["kl_coef"], device)
            global_step += args.num_prompts
            episodes = [(global_step, score, length) for score, length in episodes]
            stats = ppo_update(agent, optimizer, batch, args, train["kl_coef"])
            stats.update(rollout_stats(batch, train["kl_coef"], agent.vocab))
            if args.adaptive_kl:
                train["kl_coef"] = adaptive_kl_coef(train["kl_coef"], stats["objective/kl"], args)
            if run.log.writer is not None and args.sample_every and iteration % args.sample_every == 0:
                run.log.writer.add_text("samples", sample_table(batch, agent.vocab), global_step)
            if run.end_iteration(iteration, global_step, lrnow, stats, episodes, train):
                break
        run.finish(agent, global_step)
    return run.record


def pretrain(agent: Agent, args: Args, device: torch.device) -> None:
    """Stage 1: next-token cross-entropy (at temperature 1) on reviews sampled from the grammar, `pretrain_steps`
    Adam steps of 64 reviews: the reference policy, a grammatical, sentiment-neutral language model."""
    rng, optimizer = random.Random(args.seed), torch.optim.Adam(agent.parameters(), lr=3e-3)
    for step in range(args.pretrain_steps):
        tokens = agent.vocab.encode([sample_review(rng) for _ in range(64)], device)
        logits = agent.forward_lm(tokens[:, :-1])[1]
        targets = tokens[:, 1:].reshape(-1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, ignore_index=agent.vocab.pad)
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 50) * (1 - step / args.pretrain_steps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def sample_review(rng: random.Random) -> list[str]:
    """One review of the grammar `the NOUN VERB [very] ADJ ((and|but) [very] ADJ)* . [the NOUN VERB ... .]`,
    adjectives uniform over all 18 (so sentiment-neutral on average), at most 1 + 16 tokens after the prompt."""
    while True:
        words = []
        for sentence in range(1 + (rng.random() < 0.3)):
            words += ["the", rng.choice(NOUNS), rng.choice(VERBS)]
            for conjunct in range(1 + (rng.random() < 0.4)):
                words += ([rng.choice(["and", "but"])] if conjunct else []) + ["very"] * (rng.random() < 0.3)
                words.append(rng.choice(ADJECTIVES))
            words.append(".")
        if len(words) - 2 + 1 <= 16:  # the response (after "the NOUN") and its <eos> fit 16 tokens
            return words


def rollout(agent: Agent, reference: Agent, reward_model, args: Args, kl_coef: float, device: torch.device):
    """Generate, truncate, score: the batch of one iteration.

    Prompts (GRPO: each repeated `group_size` times) get `response_length` sampled tokens; everything after a
    response's first <eos> becomes <pad> and leaves the mask (the <eos> itself stays: the score is given there). The
    old log-probabilities and values, and the reference's log-probabilities, come from one batched pass each at the
    sampling temperature. Per-token rewards: -kl_coef * kl_t (the k1 or k3 estimate) plus the score at the last valid
    token (GRPO: no KL in the reward, it is in the loss; `kl` is its k3). Returns (batch of [B, R] tensors,
    [(score, length)]).
    """
    repeat = args.group_size if args.advantage == "grpo" else 1
    prompts = agent.vocab.prompts(args.num_prompts // repeat, None, device).repeat_interleave(repeat, 0)
    context, vocab = prompts.shape[1], agent.vocab
    query_responses = agent.generate(prompts, args.response_length)
    responses, mask = truncate_after_eos(query_responses[:, context:], vocab.eos, vocab.pad)
    query_responses = torch.cat([prompts, responses], 1)
    with torch.no_grad():
        logprobs, _, values = agent.get_action_and_value(query_responses, context)
        ref_logprobs, _, _ = reference.get_action_and_value(query_responses, context)
        scores = score_responses(query_responses, reward_model, vocab)
        has_eos = (responses == vocab.eos).any(1)
        scores = scores - args.missing_eos_penalty * (~has_eos).float()
        estimator = args.kl_estimator or ("k3" if args.advantage == "grpo" else "k1")
        kl = kl_estimate(logprobs, ref_logprobs, estimator) * mask
        rewards = torch.zeros_like(logprobs) if args.advantage == "grpo" else -kl_coef * kl
        last = mask.sum(1).long() - 1  # the <eos> (or the last token of a response that has none)
        rewards[torch.arange(len(rewards)), last] += scores
    batch = dict(query_responses=query_responses, mask=mask, logprobs=logprobs, ref_logprobs=ref_logprobs)
    batch.update(rewards=rewards, scores=scores, kl=kl, has_eos=has_eos)
    if args.advantage == "grpo":
        batch["advantages"] = group_advantages(scores, args.group_size)[:, None].expand_as(mask) * mask
    else:
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages = token_gae(rewards, values, mask, args.gamma, args.gae_lambda)
        batch.update(values=values, returns=advantages + values, advantages=masked_whiten(advantages, mask))
    episodes = [(float(s), int(n)) for s, n in zip(scores.tolist(), mask.sum(1).tolist())]
    return batch, episodes


def truncate_after_eos(responses: torch.Tensor, eos: int = EOS, pad: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Responses [B, R] int64 with every token after the first `eos` set to `pad`, and the mask [B, R] float of the
    valid tokens: those up to and including the first `eos` (all of them when there is none)."""
    is_eos = responses == eos
    after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first <eos>
    return responses.masked_fill(after, pad), (~after).float()


def score_responses(query_responses: torch.Tensor, reward_model, vocab: Vocabulary) -> torch.Tensor:
    """The score [B] of each prompt + response: the gold score of its words, or the reward model's."""
    if reward_model is not None:
        return reward_model(query_responses)
    scores = [gold_score(vocab.words(row)) for row in query_responses.tolist()]
    return torch.tensor(scores, device=query_responses.device)


def gold_score(words: list[str]) -> float:
    """The programmatic reward of a response: (#positive - #negative) / #adjectives in [-1, 1] (0 without one)."""
    adjectives = [w for w in words if w in ADJECTIVES]
    return (sum(w in POSITIVE for w in adjectives) - sum(w in NEGATIVE for w in adjectives)) / max(len(adjectives), 1)


def grammatical(words: list[str]) -> bool:
    """Whether prompt + response (words up to and including <eos>) parse as a review of the grammar: the first
    sentence, at most one more, then <eos>. The reward never sees this: it measures whether the policy stayed a
    language model."""
    if not words or words[-1] != "<eos>":
        return False
    i, sentences, n = 0, 0, len(words) - 1
    while i < n:
        if not (i + 2 < n and words[i] == "the" and words[i + 1] in NOUNS and words[i + 2] in VERBS):
            return False
        i += 3
        while True:
            i += i < n and words[i] == "very"
            if not (i < n and words[i] in ADJECTIVES):
                return False
            i += 1
            if i < n and words[i] in ("and", "but"):
                i += 1
                continue
            break
        if not (i < n and words[i] == "."):
            return False
        i, sentences = i + 1, sentences + 1
    return 1 <= sentences <= 2


def decode(tokens) -> list[str]:
    """Token ids -> words, <pad> dropped."""
    return [VOCAB[t] for t in tokens if t != PAD]


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probabilities [B, R] (Schulman,
    http://joschu.net/blog/kl-approx.html): k1 = log pi - log pi_ref (unbiased, can be negative); k3 = (r - 1) -
    log r with r = pi_ref / pi (unbiased, >= 0)."""
    logr = ref_logprobs - logprobs
    return -logr if estimator == "k1" else torch.expm1(logr) - logr


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the entries where mask [same shape, 0/1 float] is 1."""
    return (x * mask).sum() / mask.sum()


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the valid entries (unbiased var, as TRL's masked_whiten); without
    `shift_mean` the mean is added back (whitened scale, original mean). Invalid entries come out 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def token_gae(rewards, values, mask, gamma: float, gae_lambda: float) -> torch.Tensor:
    """GAE over the tokens of each response (Schulman et al. 2016, eq. 16), [B, R]: delta_t = r_t + gamma *
    V_{t+1} - V_t with V past the last valid token 0, A_t = delta_t + gamma * lambda * A_{t+1}."""
    values = torch.cat([values * mask, torch.zeros_like(values[:, :1])], 1)  # 0 past the last valid token
    advantages, last = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        last = rewards[:, t] + gamma * values[:, t + 1] - values[:, t] + gamma * gae_lambda * last
        advantages[:, t] = last
    return advantages * mask


def group_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO's sequence advantage [B] (Shao et al. 2024, section 4.1.2): each score minus its group's mean, over the
    group's std (+1e-4); a group is `group_size` consecutive samples of one prompt."""
    groups = scores.view(-1, group_size)
    return ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).view(-1)


def ppo_update(agent: Agent, optimizer: torch.optim.Optimizer, batch: dict, args: Args, kl_coef: float) -> dict:
    """`update_epochs` passes over the batch's sequences in `num_minibatches` shuffled minibatches, each one Adam
    step on rlhf_loss (`kl_coef`: GRPO's KL coefficient, the adaptive one's current value), the gradient clipped.
    With `args.target_kl`, the update phase ends before the step of the first minibatch whose approximate KL (from
    the loss's own forward, before its step) is above it. Returns TRL's statistics, each measured before its
    minibatch's step and averaged over the minibatches measured (policy/approxkl_avg, policy/clipfrac_avg,
    loss/policy_avg, loss/value_avg, val/ratio, policy/entropy_avg), and minibatch_updates, the steps taken."""
    logs, steps, stop = [], 0, False
    for epoch in range(args.update_epochs):
        for mb_inds in torch.randperm(len(batch["mask"])).tensor_split(args.num_minibatches):
            mb = {k: v[mb_inds.to(v.device)] for k, v in batch.items()}
            loss, stats = rlhf_loss(agent, mb, args, kl_coef)
            logs.append(stats)
            if args.target_kl is not None and stats["policy/approxkl_avg"] > args.target_kl:
                stop = True
                break
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
            steps += 1
        if stop:
            break
    means = torch.stack([torch.stack(list(s.values())) for s in logs]).mean(0).tolist()
    return {"minibatch_updates": steps, **dict(zip(logs[0], means))}


def rlhf_loss(agent: Agent, mb: dict, args: Args, kl_coef: float) -> tuple[torch.Tensor, dict]:
    """The loss on one minibatch of sequences: PPO's clipped surrogate (arXiv 1707.06347, eq. 7) plus vf_coef times
    the clipped value loss, or for GRPO the surrogate plus `kl_coef` times the k3 KL to the reference (Shao et al.
    2024, eq. 3). The surrogate and GRPO's KL are averaged as --loss-agg says (aggregate); the value loss and the
    statistics are means over the valid tokens. Returns (loss, {TRL tag: detached 0-d})."""
    mask = mb["mask"]
    context = mb["query_responses"].shape[1] - mask.shape[1]  # the prompt's tokens
    logprob, entropy, value = agent.get_action_and_value(mb["query_responses"], context)
    logratio = (logprob - mb["logprobs"]) * mask
    ratio = logratio.exp()
    pg_losses = torch.max(
        -mb["advantages"] * ratio, -mb["advantages"] * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
    )
    pg_loss = aggregate(pg_losses, mask, args.loss_agg)
    stats = {"loss/policy_avg": pg_loss, "policy/entropy_avg": masked_mean(entropy, mask)}
    if args.advantage == "grpo":
        loss = pg_loss + kl_coef * aggregate(kl_estimate(logprob, mb["ref_logprobs"], "k3"), mask, args.loss_agg)
    else:
        v_loss = (value - mb["returns"]) ** 2
        if args.clip_vloss:
            clipped = mb["values"] + (value - mb["values"]).clamp(-args.vf_clip_coef, args.vf_clip_coef)
            v_loss = torch.max(v_loss, (clipped - mb["returns"]) ** 2)
        v_loss = 0.5 * masked_mean(v_loss, mask)
        loss = pg_loss + args.vf_coef * v_loss
        stats["loss/value_avg"] = v_loss
    clipfrac = masked_mean(((ratio - 1).abs() > args.clip_coef).float(), mask)
    approxkl = masked_mean(0.5 * logratio**2, mask)  # TRL's approxkl: half the mean squared log-ratio
    stats.update(
        {"policy/approxkl_avg": approxkl, "policy/clipfrac_avg": clipfrac, "val/ratio": masked_mean(ratio, mask)}
    )
    return loss, {k: v.detach() for k, v in stats.items()}


def aggregate(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """A per-token loss [B, R] as one number: "token", the mean over all valid tokens (mask [B, R] 0/1 float; TRL's
    PPO, DAPO: Yu et al. 2025, arXiv 2503.14476, eq. 8); "sequence", each row's mean over its valid tokens, then the
    mean over rows (GRPO: Shao et al. 2024, eq. 3)."""
    if how == "token":
        return masked_mean(x, mask)
    return ((x * mask).sum(1) / mask.sum(1)).mean()


def rollout_stats(batch: dict, kl_coef: float, vocab: Vocabulary) -> dict:
    """TRL's objective/ statistics of the rollout, plus the gold ones: mean sequence KL and entropy proxy, scores,
    the RLHF reward (score - kl_coef * KL), the number of responses with an <eos>, response length, grammaticality."""
    seq_kl = batch["kl"].sum(1)
    words = [vocab.words(row) for row in batch["query_responses"].tolist()]
    return {
        "objective/kl": seq_kl.mean().item(),
        "objective/entropy": (-batch["logprobs"] * batch["mask"]).sum(1).mean().item(),
        "objective/scores": batch["scores"].mean().item(),
        "objective/non_score_reward": (-kl_coef * seq_kl).mean().item(),
        "objective/rlhf_reward": (batch["scores"] - kl_coef * seq_kl).mean().item(),
        "objective/kl_coef": kl_coef,
        "val/num_eos_tokens": batch["has_eos"].sum().item(),
        "charts/response_length": batch["mask"].sum(1).mean().item(),
        "gold/score": float(np.mean([gold_score(w) for w in words])),
        "gold/grammatical": float(np.mean([grammatical(w) for w in words])),
    }


def adaptive_kl_coef(kl_coef: float, kl: float, args: Args) -> float:
    """Ziegler et al. 2019's adaptive controller (section 2.2): e = clip(KL / target - 1, -0.2, 0.2),
    beta <- beta * (1 + e * n / horizon) with n the episodes of this iteration."""
    error = float(np.clip(kl / args.kl_target - 1, -0.2, 0.2))
    return kl_coef * (1 + error * args.num_prompts / args.kl_horizon)


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
    start, rate = ckpt["lr_schedule"]
    if args.learning_rate != saved["learning_rate"]:
        return k + 1, args.learning_rate
    saved_iterations = saved["total_timesteps"] // saved["num_prompts"]
    if args.num_iterations == saved_iterations and args.anneal_lr == saved["anneal_lr"]:
        return start, rate
    last = annealed_lr(k, saved_iterations, rate, start) if saved["anneal_lr"] else saved["learning_rate"]
    return k, last


def sample_table(batch: dict, vocab: Vocabulary, rows: int = 8) -> str:
    """A markdown table of the first `rows` responses with their scores (TensorBoard text)."""
    lines = ["|response|score|", "|-|-|"]
    for tokens, score in list(zip(batch["query_responses"].tolist(), batch["scores"].tolist()))[:rows]:
        lines.append(f"|{' '.join(vocab.words(tokens))}|{score:.2f}|")
    return "\n".join(lines)


class RewardModel(nn.Module):
    """Stage 2 (`--reward model`): a GPT with a scalar head on the last valid token, trained by Bradley-Terry on
    synthetic preference pairs (the pair's higher gold score preferred), its output normalised to mean 0 and std 1 on
    reference samples (InstructGPT's reward normalisation); or (--reward-model-name) a transformers
    sequence-classification model as it is. forward: sequences [B, T] -> scores [B]."""

    def __init__(self, args: Args, vocab: Vocabulary):
        super().__init__()
        self.register_buffer("shift", torch.zeros(())), self.register_buffer("scale", torch.ones(()))
        self.pad, self.model = vocab.pad, None
        if args.reward_model_name is not None:
            self.model = load_transformers("AutoModelForSequenceClassification", args.reward_model_name, vocab)
            return
        self.backbone = GPT(len(VOCAB), args.n_layer, args.d_model, args.n_head)
        self.head = nn.Linear(args.d_model, 1)

    def forward(self, tokens):
        if self.model is not None:  # it finds each row's last non-pad token itself (config.pad_token_id)
            return transformers_forward(self.model, tokens, self.pad).logits[:, 0]
        last = ((tokens != PAD).sum(1) - 1).clamp(min=0)
        hidden = self.backbone(tokens)[torch.arange(len(tokens)), last]
        return (self.head(hidden).squeeze(-1) - self.shift) / self.scale


def train_reward_model(reward_model: RewardModel, agent: Agent, args: Args, device: torch.device) -> None:
    """Bradley-Terry: minimise -log sigmoid(r(chosen) - r(rejected)) over `reward_model_steps` batches of 64 pairs of
    grammar samples (ties skipped); then normalise on 512 responses of the reference policy."""
    rng, optimizer = random.Random(args.seed + 1), torch.optim.Adam(reward_model.parameters(), lr=1e-3)
    for _ in range(args.reward_model_steps):
        a, b = (agent.vocab.encode([sample_review(rng) for _ in range(64)], device) for _ in range(2))
        ga, gb = (torch.tensor([gold_score(decode(r)) for r in x.tolist()], device=device) for x in (a, b))
        keep = ga != gb
        chosen, rejected = torch.where((ga > gb)[:, None], a, b)[keep], torch.where((ga > gb)[:, None], b, a)[keep]
        loss = -F.logsigmoid(reward_model(chosen) - reward_model(rejected)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        prompts = make_prompts(512, torch.Generator().manual_seed(args.seed + 2), device)
        responses, _ = truncate_after_eos(agent.generate(prompts, args.response_length)[:, PROMPT_LENGTH:])
        scores = reward_model(torch.cat([prompts, responses], 1))
        reward_model.shift.fill_(scores.mean())
        reward_model.scale.fill_(scores.std())


def evaluate(agent: Agent, args: Args, episodes: int, greedy: bool, device: torch.device) -> np.ndarray:
    """Score `episodes` responses to held-out prompts (their own generator, seed + 10000), sampled or greedy, and
    print their grammaticality, how many end with <eos> and their mean sequence KL to the reference (the k1 sum
    over the valid tokens, nats). Returns [episodes] float64 gold scores."""
    generator = torch.Generator(device=device).manual_seed(args.seed + 10000)
    vocab, reference = agent.vocab, agent.reference[0]
    with torch.no_grad():
        prompts = vocab.prompts(episodes, torch.Generator().manual_seed(args.seed + 10000), device)
        generated = agent.generate(prompts, args.response_length, generator=generator, greedy=greedy)
        responses, mask = truncate_after_eos(generated[:, prompts.shape[1] :], vocab.eos, vocab.pad)
        query_responses = torch.cat([prompts, responses], 1)
        logprobs, _, _ = agent.get_action_and_value(query_responses, prompts.shape[1])
        ref_logprobs, _, _ = reference.get_action_and_value(query_responses, prompts.shape[1])
        kl = (kl_estimate(logprobs, ref_logprobs, "k1") * mask).sum(1).mean().item()
    words = [vocab.words(row) for row in query_responses.tolist()]
    gram, eos = np.mean([grammatical(w) for w in words]), np.mean([w[-1:] == ["<eos>"] for w in words])
    mode = "greedy" if greedy else "sampled"
    print(f"eval ({mode}): grammatical {gram:.2f}, ends with <eos> {eos:.2f}, KL to the reference {kl:.2f}", flush=True)
    return np.array([gold_score(w) for w in words])


# ---- this script's checks (run by Run.start, before anything is built or written) ----


def validate_args(args: Args) -> None:
    """Check the flags.

    Raises:
        UsageError: naming the first bad flag.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(
            "torchrun: this script trains in one process, run it with python (ppo_atari.py trains data-parallel)"
        )
    for name in ("total_timesteps", "num_prompts", "response_length", "update_epochs", "num_minibatches", "n_layer"):
        if getattr(args, name) <= 0:
            raise UsageError(f"{flag(name)} must be positive, got {getattr(args, name)}")
    for name in ("temperature", "learning_rate", "clip_coef", "vf_clip_coef", "max_grad_norm", "kl_target"):
        if not getattr(args, name) > 0:
            raise UsageError(f"{flag(name)} must be positive, got {getattr(args, name)}")
    for name in ("gamma", "gae_lambda"):
        if not 0 <= getattr(args, name) <= 1:
            raise UsageError(f"{flag(name)} must be in [0, 1], got {getattr(args, name)}")
    for name in ("kl_coef", "vf_coef", "missing_eos_penalty", "pretrain_steps", "checkpoint_every", "eval_episodes"):
        if getattr(args, name) < 0:
            raise UsageError(f"{flag(name)} must not be negative, got {getattr(args, name)}")
    if args.d_model % args.n_head:
        raise UsageError(f"--n-head {args.n_head} must divide --d-model {args.d_model}")
    if args.advantage == "grpo" and (args.group_size < 2 or args.num_prompts % args.group_size):
        raise UsageError(f"--group-size {args.group_size} must be >= 2 and divide --num-prompts {args.num_prompts}")
    if args.num_prompts < args.num_minibatches:
        raise UsageError(f"--num-minibatches {args.num_minibatches} is more than --num-prompts {args.num_prompts}")
    if args.total_timesteps < args.num_prompts:
        raise UsageError(f"--total-timesteps {args.total_timesteps} is less than one batch (--num-prompts)")
    if args.reward_model_name is not None and (args.model_name is None or args.reward != "model"):
        raise UsageError("--reward-model-name needs --reward model and --model-name (it reads the policy's tokens)")
    if args.model_name is not None and args.reward == "model" and args.reward_model_name is None:
        raise UsageError("--reward model with --model-name needs --reward-model-name (the built-in one reads 44 words)")
    if args.model_name is None and PROMPT_LENGTH + args.response_length > 64:
        raise UsageError(f"--response-length {args.response_length}: at most {64 - PROMPT_LENGTH} (the position table)")
    if args.checkpoint_every and not args.save_model:
        raise UsageError("--checkpoint-every needs --save-model")
    if args.target_kl is not None and not args.target_kl > 0:
        raise UsageError(f"--target-kl must be positive or None, got {args.target_kl}")
    default = Args()
    if args.advantage == "grpo":
        if args.kl_estimator == "k1":
            raise UsageError("--kl-estimator k1: GRPO's KL term in the loss is k3 (k1's gradient is 0 on average)")
        for name in ("critic", "vf_coef", "clip_vloss", "vf_clip_coef", "gamma", "gae_lambda", "whiten_rewards"):
            if getattr(args, name) != getattr(default, name):
                raise UsageError(
                    f"{flag(name)} {getattr(args, name)}: --advantage grpo has no critic or per-token rewards "
                    "(it belongs to --advantage gae)"
                )
    elif args.group_size != default.group_size:
        raise UsageError(f"--group-size {args.group_size} needs --advantage grpo")


def check_env(args: Args) -> tuple:
    """The task is built in: only `synthetic-reviews`; --model-name and --reward-model-name must load (their
    tokenizer and config). Returns (None, None) (no env spaces).

    Raises:
        UsageError: naming --env-id, --model-name or --reward-model-name.
    """
    if args.env_id != "synthetic-reviews":
        raise UsageError(f"--env-id {args.env_id}: the only task is synthetic-reviews")
    for name in ("model_name", "reward_model_name"):
        if getattr(args, name) is None:
            continue
        if importlib.util.find_spec("transformers") is None:
            raise UsageError(f"{flag(name)} needs transformers: pip install transformers")
        import transformers

        try:
            transformers.AutoConfig.from_pretrained(getattr(args, name))
            tokenizer = load_transformers("AutoTokenizer", getattr(args, name)) if name == "model_name" else None
        except (OSError, ValueError) as error:
            raise UsageError(f"{flag(name)} {getattr(args, name)}: {str(error).splitlines()[0]}") from None
        if tokenizer is not None and tokenizer.eos_token_id is None:
            raise UsageError(f"--model-name {args.model_name}: its tokenizer has no EOS token")
    return None, None


# ---- transformers models (--model-name, --reward-model-name): imported only when used ----


def load_transformers(kind: str, name: str, vocab: Vocabulary | None = None):
    """transformers' `kind` (AutoTokenizer, AutoModelForCausalLM, AutoModel, AutoModelForSequenceClassification: 1 label)
    from `name`; a model in float32 with its embeddings grown to `vocab` (an added pad token) and dropout off (the
    first ratios must be 1). transformers is imported here: only --model-name needs it."""
    import transformers

    if kind == "AutoTokenizer":
        return transformers.AutoTokenizer.from_pretrained(name)
    extra = {"num_labels": 1} if kind == "AutoModelForSequenceClassification" else {}
    config = fast_config(transformers.AutoConfig.from_pretrained(name, **extra))
    model = getattr(transformers, kind).from_pretrained(name, config=config, dtype=torch.float32)
    if model.get_input_embeddings().num_embeddings < vocab.size:
        model.resize_token_embeddings(vocab.size)
    model.config.pad_token_id = vocab.pad
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def transformers_forward(model, tokens: torch.Tensor, pad: int):
    """A transformers model on tokens [B, T] with pads (left and after EOS) masked out and positions counted from
    each row's first token, as TRL's forward, no KV cache; returns its output with the hidden states."""
    mask = tokens != pad
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    kwargs = dict(attention_mask=mask.long(), position_ids=positions, output_hidden_states=True, use_cache=False)
    return model(input_ids=tokens, **kwargs)


def transformers_generate(agent: Agent, prompts, length: int, generator: torch.Generator | None, greedy: bool):
    """Agent.generate for a transformers model: `generate` at the agent's temperature, top_k 0, top_p 1, padded to
    [B, P + length]; a `generator` seeds a forked torch RNG (transformers samples from the global one)."""
    from transformers import GenerationConfig

    sampling = {} if greedy else {"do_sample": True, "temperature": agent.temperature, "top_k": 0, "top_p": 1.0}
    config = GenerationConfig(max_new_tokens=length, pad_token_id=agent.vocab.pad, eos_token_id=agent.vocab.eos)
    config.update(**sampling)
    forked = torch.random.fork_rng(devices=[prompts.device] if prompts.is_cuda else [])
    with forked if generator is not None else contextlib.nullcontext():
        if generator is not None:
            torch.manual_seed(generator.initial_seed())
        attention_mask = (prompts != agent.vocab.pad).long()
        out = agent.lm.generate(input_ids=prompts, attention_mask=attention_mask, generation_config=config)
    return F.pad(out, (0, prompts.shape[1] + length - out.shape[1]), value=agent.vocab.pad)


# ---- speed ----
# Adam is fused (main: one kernel over all parameters; +6% episodes/s with the built-in GPT, more with two
# transformers models) and a GPT-2 model's GELU is torch's own kernel. Measured with benchmarks/rlhf_speed.py.


def fast_config(config):
    """A transformers config with GPT-2's `gelu_new` (the tanh GELU written as 8 tensor operations) as
    `gelu_pytorch_tanh`: the same function as one torch kernel, forward and backward (+20% episodes/s with fused Adam
    on the tiny GPT-2, 1 thread; the logits agree to float rounding, tested)."""
    if getattr(config, "activation_function", None) == "gelu_new":
        config.activation_function = "gelu_pytorch_tanh"
    return config


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
