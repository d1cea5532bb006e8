"""ppo_rlhf.py's results table and its KL-penalty figure, from the runs' TensorBoard logs.

    python -m benchmarks.rlhf runs/ --out benchmarks/results/rlhf

Runs are grouped by exp_name (`--exp-name`: ppo_rlhf, ppo_rlhf_kl0, ...). Per group, over its seeds: the gold score,
grammaticality, EOS rate and mean sequence KL of the last 10 iterations (training samples), the final evaluation's
gold score on held-out prompts (`--eval-episodes`, sampled), the wall time, and the stability columns: per seed,
the iterations after the 10th whose samples were less than 90% grammatical, and the largest sequence KL after the
10th. The figure puts the mean sequence KL
and grammaticality of the groups named by --figure side by side against episodes.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.report import load_runs, pyplot, seeds


@dataclass
class Args:
    runs: Annotated[str, tyro.conf.Positional]
    """the folder holding the runs ({env_id}__{exp_name}__{seed}__{time})"""
    out: str | None = None
    """write results.md (and the figure) here; without, print the table"""
    figure: list[str] = field(default_factory=lambda: ["ppo_rlhf", "ppo_rlhf_kl0"])
    """the exp_names drawn side by side in kl_penalty.png"""


def scalars(run_dir: str) -> dict[str, list[tuple[int, float, float]]]:
    """{tag: [(step, value, wall_time)]} of one run."""
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(s.step, s.value, s.wall_time) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def last(series, n: int = 10) -> float:
    return float(np.mean([v for _, v, _ in series[-n:]]))


def prompts(run: dict) -> int:
    """Responses per iteration (--num-prompts): the episodes the run logged at its last step."""
    final = run["charts/episodic_return"][-1][0]
    return sum(step == final for step, _, _ in run["charts/episodic_return"])


def main(args: Args) -> None:
    groups: dict[str, list[dict]] = {}
    for run in load_runs(args.runs):  # the report's reader: run names parsed, the latest of repeated seeds
        groups.setdefault(run.exp_name, []).append({"seed": run.seed, **scalars(run.path)})
    if not groups:
        raise SystemExit(f"benchmarks.rlhf: error: no runs under {args.runs}")
    lines = [
        "| exp_name | seeds | gold score (last 10) | grammatical | ends with EOS | sequence KL | eval gold score | wall s "
        "| iterations after the 10th with grammatical < 0.9 | largest sequence KL after the 10th |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in groups.items():
        cells = []
        for tag in ("gold/score", "gold/grammatical", "val/num_eos_tokens", "objective/kl"):
            values = [last(r[tag]) for r in runs]
            if tag == "val/num_eos_tokens":  # a fraction of the responses: one episode each per iteration
                values = [v / prompts(r) for v, r in zip(values, runs)]
            cells.append(f"{np.mean(values):.3f} ({', '.join(f'{v:.2f}' for v in values)})")
        evals = [np.mean([v for _, v, _ in r["eval/episodic_return"]]) for r in runs if "eval/episodic_return" in r]
        cells.append(f"{np.mean(evals):.3f}" if evals else "-")
        walls = [r["objective/kl"][-1][2] - r["objective/kl"][0][2] for r in runs]
        cells.append(f"{np.mean(walls):.0f} (PPO loop)")
        degraded = [sum(v < 0.9 for _, v, _ in r["gold/grammatical"][10:]) for r in runs]
        cells.append(f"{sum(degraded)} ({', '.join(map(str, degraded))})")
        peaks = [max([v for _, v, _ in r["objective/kl"][10:]], default=float("nan")) for r in runs]
        cells.append(f"{max(peaks):.2f} ({', '.join(f'{v:.2f}' for v in peaks)})")
        lines.append(f"| {name} | {seeds(len(runs))} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        plt = pyplot()
        Path(args.out).mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for name in args.figure:
            for ax, tag in zip(axes, ("objective/kl", "gold/grammatical")):
                curves = [np.array([v for _, v, _ in r[tag]]) for r in groups.get(name, [])]
                if not curves:
                    continue
                n = min(len(c) for c in curves)
                mean = np.mean([c[:n] for c in curves], 0)
                steps = [s for s, _, _ in groups[name][0][tag]][:n]
                ax.plot(steps, mean, label=f"{name} ({len(curves)} seeds)")
                ax.set_title(tag)
                ax.set_xlabel("episodes")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(Path(args.out) / "kl_penalty.png", dpi=100)
        (Path(args.out) / "results.md").write_text(table + "\n\n![KL penalty](kl_penalty.png)\n")
        print(f"wrote {args.out}/results.md and kl_penalty.png")


if __name__ == "__main__":
    main(tyro.cli(Args))
