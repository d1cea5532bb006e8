"""benchmarks.sensitivity on a 2 x 2 grid at a tiny budget: the runs, the table, the figure, a rerun that runs
nothing, and one-line errors."""

import json
import re

import pytest

from benchmarks import sensitivity

GRID = dict(
    scripts=("ppo_discrete.py", "a2c_baseline.py"),
    env_ids=("CartPole-v1",),
    hyperparameters=("learning_rate",),
    multipliers=(0.5, 2.0),
    seeds=(1,),
    total_timesteps=2048,
    workers=2,
)


def test_a_two_by_two_grid_writes_its_table_and_figure(tmp_path, capsys):
    table = sensitivity.main(sensitivity.Args(**GRID, out=str(tmp_path)))
    lines = table.splitlines()
    assert lines[2].startswith("| ppo_discrete.py | learning_rate | ") and lines[3].startswith("| a2c_baseline.py |")
    shares = [line for line in lines if re.match(r"\| (ppo_discrete|a2c_baseline)\.py \| [12]/2 \(\d+%\) \|", line)]
    assert len(shares) == 2
    assert (tmp_path / "sensitivity.png").stat().st_size > 0 and (tmp_path / "sensitivity.md").is_file()
    # the runs are ordinary run folders, with the scaled flag on their command line
    log = (tmp_path / "learning_rate" / "x0.5" / "ppo_discrete" / "CartPole-v1" / "seed1" / "run.log").read_text()
    assert "finished at global_step=2048" in log
    commands = [e["command"] for e in json.loads((tmp_path / "runs.json").read_text()).values()]
    assert any("--learning-rate 0.000125" in c for c in commands) and any(
        "--learning-rate 0.0014" in c for c in commands
    )
    capsys.readouterr()
    sensitivity.main(sensitivity.Args(**GRID, out=str(tmp_path)))
    assert "4 runs, 4 already done" in capsys.readouterr().out


def test_integer_hyperparameters_are_rounded_and_at_least_one():
    assert sensitivity.setting_value(5, 0.25) == 1 and sensitivity.setting_value(4, 0.5) == 2
    assert sensitivity.setting_value(2.5e-4, 4.0) == pytest.approx(1e-3)


def test_unknown_scripts_and_hyperparameters_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="^benchmarks.sensitivity: error: --scripts ppo_atari.py: not in"):
        sensitivity.main(sensitivity.Args(scripts=("ppo_atari.py",), out=str(tmp_path)))
    with pytest.raises(SystemExit, match="^benchmarks.sensitivity: error: --hyperparameters ent_coef: none of"):
        sensitivity.main(sensitivity.Args(**{**GRID, "hyperparameters": ("ent_coef",)}, out=str(tmp_path)))
