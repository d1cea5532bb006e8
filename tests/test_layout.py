"""The shape every script follows, as CleanRL's: imports and Args, the envs and the Agent, main() reading as the
algorithm, the algorithm's functions, one speed section, then the run plumbing behind one banner, the same text in
every script (so a plumbing fix is one edit copied, and drift cannot come back)."""

import ast
import difflib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [
    "ppo_discrete.py",
    "ppo_continuous.py",
    "ppo_atari.py",
    "ppo_lstm.py",
    "trpo_baseline.py",
    "a2c_baseline.py",
    "ppo_rlhf.py",
]
BANNER = (
    "# ---- run plumbing: TRY NOT TO MODIFY (checks, run folder, logging, Ctrl-C, checkpoints and resume, "
    "evaluation) ----"
)
# Lines of a script's plumbing section allowed to differ from ppo_discrete.py's, each with its reason. None today:
# what differs between the scripts reaches the plumbing by name (Args, CHECKPOINT_FORMAT, RESUME_FIXED,
# validate_args, check_env, evaluate).
ALLOWED_DIFFERENCES: dict[str, list[str]] = {}
# Where each script's training loop starts (`for iteration in range`): CleanRL's ppo.py 185, LeanRL's 343.
LOOP_BY_LINE = {
    "ppo_discrete.py": 300,
    "ppo_continuous.py": 310,
    "ppo_atari.py": 320,
    "ppo_lstm.py": 520,
    "trpo_baseline.py": 330,
    "a2c_baseline.py": 330,
    "ppo_rlhf.py": 390,  # its task section holds the vocabulary in a transformers tokenizer's ids (--model-name)
}
# What main calls, in the order the script defines it (ppo_rlhf.py has no envs: its task is built in).
CALL_ORDER = {
    "ppo_rlhf.py": ["Args", "Agent", "main", "pretrain", "rollout", "token_gae", "ppo_update", "rlhf_loss"],
}


def plumbing(script: str) -> list[str]:
    text = (ROOT / script).read_text()
    assert text.count(BANNER) == 1, f"{script}: the plumbing banner must appear once"
    return text[text.index(BANNER) :].splitlines()


@pytest.mark.parametrize("script", SCRIPTS[1:])
def test_the_plumbing_section_is_the_same_text_in_every_script(script):
    diff = [
        line
        for line in difflib.unified_diff(plumbing(SCRIPTS[0]), plumbing(script), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert diff == ALLOWED_DIFFERENCES.get(script, []), "\n".join(diff)


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_script_reads_top_to_bottom_in_call_order(script):
    text = (ROOT / script).read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    where = {node.name: node.lineno for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    banner = lines.index(BANNER) + 1
    speed = [i + 1 for i, line in enumerate(lines) if line.startswith("# ---- speed ----")]
    assert len(speed) == 1 and where["main"] < speed[0] < banner
    # imports and Args, the envs and the network, then main, then what main calls, in its order
    update = "ppo_update" if "ppo_update" in where else "trpo_update" if "trpo_update" in where else "a2c_update"
    order = CALL_ORDER.get(
        script, ["Args", "make_envs", "Agent", "main", "rollout", "make_batch", "compute_gae", update]
    )
    assert [where[name] for name in order] == sorted(where[name] for name in order), order
    assert where["evaluate"] < speed[0] and where["validate_args"] < speed[0]
    for name in ("Run", "RunLog", "StopSignals", "save_checkpoint", "load_checkpoint", "prepare_run_dir", "parse_args"):
        assert where[name] > banner, f"{name} belongs to the plumbing"
    main = next(node for node in tree.body if getattr(node, "name", None) == "main")
    assert main.end_lineno - main.lineno + 1 <= 65, "main() reads as the algorithm: keep it short"
    loop = next(i + 1 for i, line in enumerate(lines) if "for iteration in range" in line)
    assert loop <= LOOP_BY_LINE[script]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_copied_script_tells_its_reader_what_it_needs(script):
    """The header names the packages in one pip line; no install hint names this project's extras (a copied file
    has no project), and nothing points into the README (a copied file has none)."""
    text = (ROOT / script).read_text()
    header = "\n".join(text.splitlines()[:6])
    assert "Needs: pip install torch" in header and "ppo-single-file" in header
    assert "ppo-single-file[" not in text and "README" not in text
