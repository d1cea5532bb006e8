"""benchmarks.tune: a small Optuna study of ppo_discrete.py on CartPole (tiny budgets), resumed from its SQLite file;
the pruner on a planted bad trial; one-line errors for the search space."""

import optuna
import pytest

from benchmarks import tune

TINY = dict(script="ppo_discrete.py", env_ids=("CartPole-v1",), total_timesteps=2048, seeds=1)


def test_a_study_runs_writes_its_database_and_a_second_invocation_adds_trials(tmp_path, capsys):
    args = tune.Args(
        **TINY, trials=3, space=("learning_rate=log:1e-4:1e-2", "clip_coef=float:0.1:0.3"), out=str(tmp_path)
    )
    study = tune.main(args)
    assert (tmp_path / "study.db").is_file() and len(study.trials) == 3
    out = capsys.readouterr().out
    assert out.count("trial ") >= 3 and "best: trial" in out
    assert "python ppo_discrete.py --env-id CartPole-v1 --total-timesteps 2048 --learning-rate" in out
    assert (tmp_path / "tune.md").read_text().startswith("best: trial") and (tmp_path / "history.png").is_file()
    assert (tmp_path / "importance.png").is_file()
    # each trial's run is an ordinary run folder, as benchmarks.run makes them
    assert list(tmp_path.glob("trial0000/ppo_discrete/CartPole-v1/seed1/runs/*/events.out.tfevents.*"))
    again = tune.main(tune.Args(**{**vars(args), "trials": 2}))
    assert len(again.trials) == 5 and [t.number for t in again.trials] == [0, 1, 2, 3, 4]
    with pytest.raises(SystemExit, match="was made with another --space or runs"):
        tune.main(tune.Args(**{**vars(args), "space": ("learning_rate=log:1e-5:1e-2",)}))


def test_the_pruner_stops_a_clearly_worse_trial_after_its_first_run(tmp_path):
    """Two good trials (the default learning rate), then a planted one at learning rate 10, far worse after its
    first run (a run whose training turned non-finite would score 0): pruned before its second."""
    args = tune.Args(
        **{**TINY, "seeds": 2},
        trials=3,
        space=("learning_rate=log:1e-5:20",),
        enqueue=("learning_rate=2.5e-4", "learning_rate=2.5e-4", "learning_rate=10"),
        startup_trials=2,
        out=str(tmp_path),
    )
    study = tune.main(args)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED]
    assert study.trials[2].params == {"learning_rate": 10.0}
    assert [p.name for p in (tmp_path / "trial0002" / "ppo_discrete" / "CartPole-v1").iterdir()] == ["seed1"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ("learning_rate", "expected NAME=log|float|int:LOW:HIGH or NAME=cat:A,B,..."),
        ("learning_rate=exp:1:2", "expected NAME=log|float|int:LOW:HIGH"),
        ("learning_rte=log:1e-5:1e-2", "ppo_discrete.py has no flag --learning-rte"),
        ("learning_rate=log:0:1e-2", "a log range must be positive"),
        ("clip_coef=float:0.3:0.1", "LOW must be below HIGH"),
        ("update_epochs=int:2:x", "LOW:HIGH must be two integers"),
    ],
)
def test_bad_space_entries_are_one_line(entry, message, tmp_path):
    with pytest.raises(SystemExit, match=f"^benchmarks.tune: error: --space {entry}: .*") as error:
        tune.main(tune.Args(**TINY, space=(entry,), out=str(tmp_path)))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing run, no study made
