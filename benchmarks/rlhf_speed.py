"""ppo_rlhf.py against TRL 1.12's PPOTrainer (trl.experimental.ppo) on the same task, model and settings.

Both train the same tiny GPT-2 (transformers' GPT2LMHeadModel, ppo_rlhf's default size: 2 layers, d 64, 4 heads)
with a word-level tokenizer of the review language, pre-trained on the grammar once and saved, so both start from
one reference; a separate critic (TRL's value model: GPT2ForSequenceClassification; ours: --critic separate); the
gold score as the reward (for TRL wrapped as a reward model: `score` of each prefix); 64 prompts x 16 tokens,
4 epochs x 4 minibatches, temperature 0.7, kl_coef 0.05, missing-EOS penalty 1, lr 3e-4, no lr decay. Each run is
its own process, the trainers alternating for --rounds; episodes per second is each trainer's own count over its
training loop (TRL's `eps`, ppo_rlhf's charts/SPS: episodes since the loop started over the time since, at the last
iteration). ppo_rlhf's built-in GPT of the same size runs too (`ours-builtin`, its default path), and TRL once more
with its two `gc.collect()` calls per iteration made no-ops (`trl-no-gc`: TRL's own code otherwise; on this CPU
they are most of TRL's extra time). No minibatch early stop on either side (ppo_rlhf: --target-kl None).

    pip install -e ".[trl]"
    python -m benchmarks.rlhf_speed --out benchmarks/results/rlhf   # a table in speed.md
    python -m benchmarks.rlhf_speed --make-model DIR --pretrain-steps 0   # only the tiny model (tests, CI)
"""

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import ppo_rlhf as R  # noqa: E402


@dataclass
class Args:
    out: str | None = None
    """folder for speed.md (the table); none: print it only"""
    rounds: int = 2
    """runs of each trainer, alternating"""
    total_episodes: int = 64 * 30
    """episodes of each run (30 iterations of 64)"""
    pretrain_steps: int = 600
    """grammar steps of the shared starting model (ppo_rlhf's default)"""
    make_model: str | None = None
    """only write the tiny model (pre-trained for --pretrain-steps) to this folder and exit"""
    run: str | None = None
    """internal: run one trainer (trl, trl-no-gc, ours, ours-builtin) on the model in --make-model's folder, print JSON"""


def make_tiny_model(path: str, pretrain_steps: int = 0, seed: int = 1) -> None:
    """Write a tiny GPT2LMHeadModel (ppo_rlhf's default size) and a word-level tokenizer of ppo_rlhf's vocabulary
    to `path`, pre-trained on the grammar for `pretrain_steps` (ppo_rlhf.pretrain) when asked."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(R.VOCAB)}, unk_token="<pad>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    sizes = dict(vocab_size=len(R.VOCAB), n_positions=64, n_embd=64, n_layer=2, n_head=4)
    config = GPT2Config(**sizes, bos_token_id=R.BOS, eos_token_id=R.EOS, pad_token_id=R.PAD)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    if pretrain_steps:
        agent = R.Agent(R.Args(model_name=path, pretrain_steps=pretrain_steps, seed=seed))
        R.pretrain(agent, R.Args(model_name=path, pretrain_steps=pretrain_steps, seed=seed), torch.device("cpu"))
        agent.lm.save_pretrained(path)


class GoldRewardModel(torch.nn.Module):
    """ppo_rlhf's gold score in the shape TRL's get_reward calls: `backbone(input_ids, ...)` then `score(hidden)`
    [B, T, 1], read at each row's last token; here `score` of every prefix from cumulative adjective counts."""

    base_model_prefix = "backbone"

    def __init__(self):
        super().__init__()
        sign = torch.zeros(len(R.VOCAB))
        sign[[R.TOKEN[w] for w in R.POSITIVE]], sign[[R.TOKEN[w] for w in R.NEGATIVE]] = 1.0, -1.0
        is_adjective = torch.zeros(len(R.VOCAB))
        is_adjective[[R.TOKEN[w] for w in R.ADJECTIVES]] = 1.0
        self.register_buffer("sign", sign), self.register_buffer("is_adjective", is_adjective)

    def backbone(self, input_ids, **kwargs):
        class Output:
            hidden_states = [input_ids]

        return Output()

    def score(self, input_ids):
        total = self.sign[input_ids].cumsum(1)
        return (total / self.is_adjective[input_ids].cumsum(1).clamp(min=1))[..., None]


def run_trl(path: str, episodes: int, output_dir: str, collect_garbage: bool = True) -> dict:
    """TRL 1.12's PPOTrainer on the model at `path` (without `collect_garbage`, the trainer module's `gc.collect`
    is a no-op); returns episodes/s and the last iteration's scores and KL."""
    import types

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2ForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer

    if not collect_garbage:
        ppo_trainer.gc = types.SimpleNamespace(collect=lambda *args: 0)

    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    prompts = [tokenizer(f"the {noun}").input_ids for noun in R.NOUNS] * 64
    dataset = Dataset.from_dict({"input_ids": prompts})
    config = PPOConfig(
        output_dir=output_dir, per_device_train_batch_size=64, gradient_accumulation_steps=1, num_mini_batches=4,
        num_ppo_epochs=4, response_length=16, temperature=0.7, kl_coef=0.05, stop_token="eos",
        missing_eos_penalty=1.0, learning_rate=3e-4, lr_scheduler_type="constant", total_episodes=episodes,
        local_rollout_forward_batch_size=64, num_sample_generations=0, report_to=[], logging_steps=1,
        save_strategy="no", use_cpu=True, seed=1, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0,
        lam=0.95, max_grad_norm=1.0, adam_epsilon=1e-5, bf16=False, fp16=False,
    )  # fmt: skip
    history = []

    class Keep(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            history.append(logs or {})

    value_model = GPT2ForSequenceClassification.from_pretrained(path, num_labels=1)
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=AutoModelForCausalLM.from_pretrained(path),
        ref_model=AutoModelForCausalLM.from_pretrained(path), reward_model=GoldRewardModel(),
        value_model=value_model, train_dataset=dataset, eval_dataset=dataset.select(range(64)), callbacks=[Keep()],
    )  # fmt: skip
    trainer.train()
    last = [entry for entry in history if "objective/scores" in entry][-1]
    return {"eps": last["eps"], "scores": last["objective/scores"], "kl": last["objective/kl"]}


def run_ours(path: str | None, episodes: int) -> dict:
    """ppo_rlhf.main with --critic separate on the model at `path` (--pretrain-steps 0), or on its built-in GPT
    (path None: pre-trained inside, before the loop's clock starts)."""
    args = R.Args(total_timesteps=episodes, critic="separate", model_name=path, pretrain_steps=0 if path else 600)
    args.learning_rate, args.kl_coef, args.target_kl = 3e-4, 0.05, None  # TRL's settings: no minibatch early stop
    last = R.main(args)["history"][-1]
    return {"eps": last["charts/SPS"], "scores": last["objective/scores"], "kl": last["objective/kl"]}


def main(args: Args) -> None:
    if args.make_model and args.run is None:
        make_tiny_model(args.make_model, args.pretrain_steps)
        return
    if args.run:
        os.environ["HF_HUB_OFFLINE"] = "1"
        torch.set_num_threads(1)  # ppo_rlhf's default for this model size; TRL's run gets the same
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            if args.run in ("trl", "trl-no-gc"):
                result = run_trl(args.make_model, args.total_episodes, tmp, collect_garbage=args.run == "trl")
            else:
                result = run_ours(args.make_model if args.run == "ours" else None, args.total_episodes)
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = {"trl": [], "trl-no-gc": [], "ours": [], "ours-builtin": []}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"pre-training the shared starting model ({args.pretrain_steps} steps)", flush=True)
        make_tiny_model(f"{tmp}/model", args.pretrain_steps)
        for round_ in range(args.rounds):
            for name in results:
                command = [sys.executable, "-m", "benchmarks.rlhf_speed", "--run", name, "--make-model", f"{tmp}/model"]
                command += ["--total-episodes", str(args.total_episodes)]
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    sys.exit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                results[name].append(json.loads(lines[-1][len("RESULT ") :]))
                print(f"round {round_ + 1} {name}: {results[name][-1]}", flush=True)
    trl_eps = sum(r["eps"] for r in results["trl"]) / args.rounds
    no_gc = sum(r["eps"] for r in results["trl-no-gc"]) / args.rounds
    rows = ["| trainer | episodes/s | vs TRL | vs TRL without gc.collect | last iteration's score | KL (nats) |"]
    rows.append("|---|---|---|---|---|---|")
    names = {
        "trl": "TRL 1.12 PPOTrainer",
        "trl-no-gc": "TRL 1.12 PPOTrainer, its gc.collect() a no-op",
        "ours": "ppo_rlhf.py --model-name",
        "ours-builtin": "ppo_rlhf.py (built-in GPT)",
    }
    for name, runs in results.items():
        eps = sum(r["eps"] for r in runs) / args.rounds
        scores, kl = (sum(r[k] for r in runs) / args.rounds for k in ("scores", "kl"))
        rows.append(
            f"| {names[name]} | {eps:.1f} | {eps / trl_eps:.2f}x | {eps / no_gc:.2f}x | {scores:.2f} | {kl:.2f} |"
        )
    kls = {name: [f"{r['kl']:.3f}" for r in runs] for name, runs in results.items()}
    table = (
        "\n".join(rows)
        + "\n\nLast iteration's KL of each round (a fixed seed): "
        + "; ".join(f"{names[name]}: {', '.join(values)}" for name, values in kls.items())
    )
    print(table)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        note = f"{args.rounds} rounds of {args.total_episodes} episodes each, `--critic separate`, 1 torch thread.\n\n"
        (Path(args.out) / "speed.md").write_text(note + table + "\n")


if __name__ == "__main__":
    main(tyro.cli(Args))
