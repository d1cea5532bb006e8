"""CI check: every install line works alone, as a new user runs it.

For each line of the README's quickstart (`pip install -e X && python SCRIPT ...`, the test command excepted:
.ci/run runs that itself) and for each extra in pyproject.toml, make a new virtual environment, run the install
exactly as written, then run the command a few steps (the quickstart's own command with a short budget appended;
for an extra, a command that uses what the extra is for). A line that fails prints its output and fails CI.

    python .ci/install_lines.py            # all of them (a few minutes with pip's cache)
    python .ci/install_lines.py atari      # the lines whose install names this extra
"""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
SHORT = "--total-timesteps 256 --num-envs 2 --num-steps 64"  # appended to a quickstart command: a few steps

# One command per extra, run after `pip install -e ".[extra]"` alone. The ones that need no environment of their
# own (dev: .ci/run's test command) are listed with None.
EXTRAS = {
    "envpool": f"python ppo_discrete.py --env-backend envpool {SHORT}",
    "mujoco": f"python ppo_continuous.py --env-id Hopper-v5 --no-compile {SHORT}",
    "atari": "python ppo_atari.py --env-id Pong-v5 --total-timesteps 256 --num-envs 2 --num-steps 64"
    " --num-minibatches 2 && python ppo_atari.py --env-id Pong-v5 --env-backend ale --total-timesteps 256"
    " --num-envs 2 --num-steps 64 --num-minibatches 2",
    "wandb": f"WANDB_MODE=offline python ppo_discrete.py --track {SHORT}",
    "video": f"python ppo_discrete.py --capture-video {SHORT}",
    # the report of a committed run's events (Breakout, 1M steps), in the runs/ layout the report reads
    "bench": "mkdir -p {tmp}/runs/Breakout-v5__ppo_atari__1__0 && cp benchmarks/results/ppo_atari_breakout_seed1_fixed/"
    "events.* {tmp}/runs/Breakout-v5__ppo_atari__1__0 && python -m benchmarks.report {tmp}/runs --out {tmp}/report",
    # a tiny random GPT-2 and word-level tokenizer made in place (no downloads), then a few PPO iterations on it
    "rlhf": "python -m benchmarks.rlhf_speed --make-model {tmp}/lm --pretrain-steps 0 && HF_HUB_OFFLINE=1 python"
    " ppo_rlhf.py --model-name {tmp}/lm --total-timesteps 32 --num-prompts 16 --pretrain-steps 5",
    "trl": "python -m benchmarks.rlhf_speed --make-model {tmp}/lm --pretrain-steps 0 && HF_HUB_OFFLINE=1 python -m"
    " benchmarks.rlhf_speed --run trl --make-model {tmp}/lm --total-episodes 128",
    "dev": None,
}


def quickstart_lines() -> list[str]:
    """The README quickstart block's `pip install -e ...` lines, the test command left out."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", readme, re.S)
    if block is None:
        sys.exit("README.md: no ```bash block under ## Quickstart")
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip().startswith("pip install -e")]
    return [line for line in lines if not line.endswith("python -m pytest")]


def checks() -> list[tuple[str, str]]:
    """(name, shell line) for every quickstart line and extra."""
    out = [(line, f"{line} {SHORT}") for line in quickstart_lines()]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    missing = sorted(set(extras) - set(EXTRAS))
    if missing:
        sys.exit(f".ci/install_lines.py: no check for the extra(s) {missing}: add a command to EXTRAS")
    for extra in extras:
        if EXTRAS[extra] is not None:
            out.append((f".[{extra}]", f'pip install -e ".[{extra}]" && {EXTRAS[extra]}'))
    return out


def main() -> None:
    wanted = sys.argv[1:]
    failed = []
    for name, line in checks():
        if wanted and not any(w in name for w in wanted):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            venv = Path(tmp) / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            script = f"source {venv}/bin/activate && pip install --quiet --upgrade pip && {line.format(tmp=tmp)}"
            print(f"--- {name}: {line.format(tmp='$TMP')}", flush=True)
            result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True)
            if result.returncode:
                failed.append(name)
                print(result.stdout[-4000:], result.stderr[-4000:], sep="\n", flush=True)
            print(f"    {'FAILED' if result.returncode else 'ok'} (exit {result.returncode})", flush=True)
    if failed:
        sys.exit(f"install lines that failed alone in a new venv: {failed}")


if __name__ == "__main__":
    main()
