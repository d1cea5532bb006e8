"""ppo_atari.py: both backends' observations and preprocessing, real-game bookkeeping across lives, the Nature CNN,
short runs on each backend, resume without replay, signals, and data-parallel training under torchrun (gloo, CPU)."""

import glob
import importlib
import math
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, learning

from benchmarks import report

P = importlib.import_module("ppo_atari")
BACKENDS = ["envpool", "ale"]


def tiny(**kw):
    """2 iterations of 2 envs x 32 steps on Breakout: a run of a few seconds."""
    defaults = dict(num_envs=2, num_steps=32, total_timesteps=128, num_minibatches=2, update_epochs=1, torch_threads=1)
    return P.Args(**{**defaults, **kw})


# --- environments ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_observations_are_uint8_stacked_frames(backend):
    envs, obs = P.make_envs(P.Args(env_backend=backend), 2, seed=1)
    frames = [obs]
    for _ in range(30):
        obs, reward, term, trunc, infos = envs.step(np.ones(2, dtype=np.int64))
        frames.append(obs)
    envs.close()
    frames = np.stack(frames)
    assert frames.shape == (31, 2, 4, 84, 84) and frames.dtype == np.uint8
    assert frames.max() > 0 and frames.min() == 0  # a real screen: the black background and some lit pixels
    # the stack: the newest frame of one step is the second newest of the next
    np.testing.assert_array_equal(frames[1:, :, 2], frames[:-1, :, 3])


def test_the_backends_agree_on_every_preprocessing_setting(monkeypatch):
    """Both backends get ATARI_PREPROCESSING: envpool's own config, and the arguments given to ale-py (recorded)."""
    p = P.ATARI_PREPROCESSING
    args = P.Args(repeat_action_probability=0.25)
    envs, _ = P.make_envs(args, 1, seed=1)
    c = envs.config
    envs.close()
    assert (c["noop_max"], c["frame_skip"], c["episodic_life"], c["use_fire_reset"]) == (
        p["noop_max"],
        p["frame_skip"],
        p["episodic_life"],
        p["fire_reset"],
    )
    assert (c["img_height"], c["img_width"], c["gray_scale"], c["stack_num"]) == (
        p["size"],
        p["size"],
        True,
        p["stack"],
    )
    assert c["max_episode_steps"] * c["frame_skip"] == p["max_frames"]
    assert (c["reward_clip"], c["repeat_action_probability"]) == (False, 0.25)

    import ale_py

    recorded = {}

    class Recorder(ale_py.AtariVectorEnv):
        def __init__(self, game, num_envs, **kw):
            recorded.update(kw, game=game)
            super().__init__(game, num_envs, **kw)

    monkeypatch.setattr(ale_py, "AtariVectorEnv", Recorder)
    envs, _ = P.make_envs(P.Args(env_backend="ale", repeat_action_probability=0.25), 1, seed=1)
    envs.close()
    assert recorded["game"] == "breakout"
    assert (recorded["noop_max"], recorded["frameskip"], recorded["maxpool"], recorded["use_fire_reset"]) == (
        p["noop_max"],
        p["frame_skip"],
        True,
        p["fire_reset"],
    )
    # lives end the learner's episode (life_loss_info), the game goes on (ale-py's episodic_life restarts it)
    assert (recorded["life_loss_info"], recorded["episodic_life"]) == (p["episodic_life"], False)
    assert (recorded["img_height"], recorded["img_width"], recorded["grayscale"], recorded["stack_num"]) == (
        p["size"],
        p["size"],
        True,
        p["stack"],
    )
    assert recorded["max_num_frames_per_episode"] == p["max_frames"]
    assert (recorded["reward_clipping"], recorded["repeat_action_probability"]) == (False, 0.25)


def test_the_backends_show_the_same_screen():
    """The same game on both backends, the same actions: the frames differ only where the random no-ops moved the
    ball and paddle (a different resize, colour or max-pool would change most pixels)."""
    screens = []
    for backend in BACKENDS:
        envs, obs = P.make_envs(P.Args(env_backend=backend), 2, seed=1)
        frames = [obs]
        for _ in range(20):
            frames.append(envs.step(np.zeros(2, dtype=np.int64))[0])
        envs.close()
        screens.append(np.stack(frames).astype(int))
    differ = np.abs(screens[0] - screens[1]) > 0
    assert differ.mean() < 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lost_life_ends_the_learners_episode_and_the_last_one_the_game(backend):
    """Random play on the real game: a termination per lost life, the game's end only when no life is left."""
    envs, _ = P.make_envs(P.Args(env_backend=backend), 1, seed=3)
    rng = np.random.default_rng(0)
    terminations, ends = 0, 0
    while ends == 0:
        obs, reward, term, trunc, infos = envs.step(rng.integers(0, 4, 1))
        terminations += int(term[0])
        ends += int(P.game_over(backend, infos, term, trunc)[0])
    envs.close()
    assert terminations == 5 and infos["lives"][0] == 0  # Breakout: 5 lives, 5 episodes for the learner


def test_game_statistics_sum_unclipped_rewards_over_all_lives():
    games = P.GameStatistics(2)
    acted, ended = np.array([True, True]), np.array([False, False])
    assert games.update(np.array([4.0, 1.0]), acted, ended) == []
    assert games.update(np.array([0.0, 0.0]), np.array([False, True]), ended) == []  # env 0: a reset step
    assert games.update(np.array([7.0, 0.0]), acted, np.array([True, False])) == [(0, 11.0, 2)]
    assert games.update(np.array([1.0, 0.0]), acted, np.array([True, True])) == [(0, 1.0, 1), (1, 1.0, 4)]


class ScriptedAtari:
    """A fake envpool Breakout: every env plays games of 3 lives of 5 steps each, reward 3 on every step it acts;
    a lost life is `terminated` and the next step is a reset step (action ignored, reward 0), as envpool does."""

    def __init__(self, num_envs):
        self.num_envs, self.t = num_envs, 0

    def step(self, action):
        phase = self.t % 18  # 3 x (5 acting steps + 1 reset step)
        self.t += 1
        reset_step = phase % 6 == 5
        lives = 2 - phase // 6 if not reset_step else 2 - phase // 6 + (phase == 17) * 3
        term = np.full(self.num_envs, phase % 6 == 4)
        infos = {"lives": np.full(self.num_envs, lives), "terminated": np.full(self.num_envs, phase == 16)}
        reward = np.full(self.num_envs, 0.0 if reset_step else 3.0)
        return np.zeros((self.num_envs, 4, 84, 84), np.uint8), reward, term, np.zeros(self.num_envs, bool), infos

    def close(self):
        pass


def test_logged_episodes_are_real_games_and_the_learner_gets_clipped_rewards(monkeypatch, workdir):
    monkeypatch.setattr(
        P,
        "make_envs",
        lambda args, num_envs, seed: (ScriptedAtari(num_envs), np.zeros((num_envs, 4, 84, 84), np.uint8)),
    )
    seen = []
    real_gae = P.compute_gae
    monkeypatch.setattr(P, "compute_gae", lambda rewards, *a: seen.append(rewards.clone()) or real_gae(rewards, *a))
    result = P.main(tiny(num_steps=36, total_timesteps=144))
    # 2 iterations x 36 steps = 4 games per env of 18 steps; each game 15 acting steps, 3 lives x 5 x 3 points
    assert [e[1:] for e in result["episodes"]] == [(45.0, 15)] * 8
    assert [e[0] for e in result["episodes"]] == [34, 34, 70, 70, 106, 106, 142, 142]  # step 16 of 18 ends a game
    assert all(set(r.unique().tolist()) == {0.0, 1.0} for r in seen)  # sign-clipped, never 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(result["run_dir"])
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert [e.value for e in acc.Scalars("charts/episodic_return")] == [45.0] * 8
    assert {"charts/SPS", "losses/approx_kl", "losses/clipfrac", "losses/explained_variance"} <= set(tags)


def test_bad_env_ids_are_one_line_errors():
    with pytest.raises(P.UsageError, match="--env-id Humanoid-v5: not an envpool Atari environment"):
        P.check_env(P.Args(env_id="Humanoid-v5"))
    with pytest.raises(P.UsageError, match="--env-id NoSuchGame-v5: ale-py has no ROM 'no_such_game'"):
        P.check_env(P.Args(env_id="NoSuchGame-v5", env_backend="ale"))
    with pytest.raises(P.UsageError, match="not an Atari game id of the form <Game>-v5"):
        P.check_env(P.Args(env_id="ALE/Pong-v5"))
    assert P.ale_game("MontezumaRevenge-v5") == "montezuma_revenge"
    with pytest.raises(P.UsageError, match="--repeat-action-probability must be in"):
        P.validate_args(P.Args(repeat_action_probability=1.5))


# --- network ---------------------------------------------------------------------------------------------------


def test_nature_cnn_shapes_and_init():
    torch.manual_seed(0)
    agent = P.Agent(6)
    convs = [m for m in agent.network if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)),
        (64, (4, 4), (2, 2)),
        (64, (3, 3), (1, 1)),
    ]
    assert agent.network[7].weight.shape == (512, 3136)
    for layer, gain in [(agent.network[7], math.sqrt(2)), (agent.actor, 0.01), (agent.critic, 1.0)]:
        w = layer.weight.detach()
        np.testing.assert_allclose((w @ w.T).numpy(), gain**2 * np.eye(w.shape[0]), atol=1e-5)  # orthogonal rows
        assert layer.bias.abs().max() == 0
    w = convs[0].weight.detach().reshape(32, -1)
    np.testing.assert_allclose((w @ w.T).numpy(), 2 * np.eye(32), atol=1e-5)
    x = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    hidden = agent.hidden(x)
    assert hidden.shape == (5, 512) and agent.actor(hidden).shape == (5, 6) and agent.get_value(x).shape == (5,)
    # frames are scaled to [0, 1] inside the network
    torch.testing.assert_close(hidden, agent.network(x.float() / 255.0))


# --- runs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_run(backend, workdir):
    result = P.main(tiny(env_backend=backend, eval_episodes=1, num_steps=64, total_timesteps=512))
    assert len(result["history"]) == 4
    assert all(math.isfinite(v) for h in result["history"] for v in h.values() if k_not_nan(v))
    assert result["history"][-1]["charts/learning_rate"] == pytest.approx(2.5e-4 / 4)
    assert result["episodes"] and all(e[2] > 0 for e in result["episodes"])
    assert set(result["eval"]) == {"sampled", "greedy"}


def test_capture_video_records_one_whole_game_in_colour(workdir, capsys):
    result = P.main(tiny(capture_video=True))
    videos = glob.glob(f"videos/{result['run_name']}/*.mp4")
    assert len(videos) == 1
    from moviepy import VideoFileClip

    clip = VideoFileClip(videos[0])
    frame = clip.get_frame(0)
    assert frame.shape == (210, 160, 3) and (frame[..., 0] != frame[..., 1]).any()  # the game's screen, in colour
    # every emulator frame of a whole game: 5 lives of Breakout take far more than a few hundred frames
    assert clip.n_frames > 300
    assert "video of one game (return " in capsys.readouterr().out


@pytest.mark.parametrize("module", ["moviepy", "cv2", "ale_py"])
def test_capture_video_without_its_packages_is_one_line(workdir, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(P.UsageError, match=f"^--capture-video needs {module}: pip install"):
        P.main(tiny(capture_video=True))
    assert os.listdir(workdir) == []


def k_not_nan(v):
    return not (isinstance(v, float) and math.isnan(v))  # explained variance is nan when the returns are constant


def test_same_seed_same_run(workdir):
    a, b = P.main(tiny()), P.main(tiny())
    assert learning(a) == learning(b) and a["episodes"] == b["episodes"]


def test_resume_restores_the_learner_and_starts_new_games(workdir):
    first = P.main(tiny(save_model=True))
    path = f"{first['run_dir']}/checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["iteration"] == 2 and ckpt["global_step"] == 128 and ckpt["world_size"] == 1
    assert "actions" not in ckpt  # no replay: the checkpoint does not grow with the run
    seen = []
    real_update = P.ppo_update

    def update(agent, *a):
        seen.append({k: v.clone() for k, v in agent.state_dict().items()})
        return real_update(agent, *a)

    P.ppo_update = update
    try:
        shutil.copy(path, "saved.pt")  # the resumed run overwrites its checkpoint
        resumed = P.main(P.parse_args(["--resume", "saved.pt", "--total-timesteps", "256"]))
        again = P.main(P.parse_args(["--resume", "saved.pt", "--total-timesteps", "256"]))
    finally:
        P.ppo_update = real_update
    for k, v in ckpt["agent"].items():  # the first update after resuming starts from the saved parameters
        torch.testing.assert_close(seen[0][k], v, rtol=0, atol=0)
    assert resumed["run_dir"] == first["run_dir"] and resumed["env_seed"] == 1 + 2 * 1_000_003
    assert learning(resumed) == learning(again)  # a resumed run is itself reproducible
    # the schedule goes on from the checkpoint's last rate (train longer): iterations 3, 4 of a decay to 0 at 5
    last = 2.5e-4 * (1 - 1 / 2)
    assert [h["charts/learning_rate"] for h in resumed["history"]] == pytest.approx([last * 2 / 3, last / 3])
    torch.save({**ckpt, "world_size": 2}, "saved.pt")
    with pytest.raises(P.UsageError, match="saved by 2 process\\(es\\), resumed by 1"):
        P.main(P.parse_args(["--resume", "saved.pt", "--total-timesteps", "256"]))


def test_sigterm_checkpoints_and_resumes(workdir):
    command = [sys.executable, "-u", str(ROOT / "ppo_atari.py"), "--num-envs", "2", "--num-steps", "32"]
    command += ["--num-minibatches", "2", "--update-epochs", "1", "--torch-threads", "1", "--save-model"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("global_step="):
            proc.send_signal(signal.SIGTERM)
            break
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + out
    assert "SIGTERM: stopped after iteration" in out
    (path,) = glob.glob("runs/*/checkpoint.pt")
    assert f"resume with --resume {path}" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_run(workdir):
    result = P.main(tiny())
    assert next(result["agent"].parameters()).device.type == "cuda"


# --- torchrun --------------------------------------------------------------------------------------------------

PROBE = """
import os
import sys
import torch
import ppo_atari as P
result = P.main(P.parse_args(sys.argv[2:]))
torch.save({"agent": result["agent"].state_dict(), "env_seed": result["env_seed"], "history": result["history"]},
           f"{sys.argv[1]}/rank{os.environ['RANK']}.pt")
"""


def torchrun(
    tmp_path, flags: list[str], port: int, probe: str = PROBE, **env
) -> tuple[subprocess.CompletedProcess, dict, dict]:
    """Run ppo_atari.main in 2 processes under torchrun (gloo, CPU) with `flags` and extra `env` variables (None
    removes one), through `probe`. Returns (the finished process, rank 0's and rank 1's agent state, env_seed and
    history). A run that hangs fails after 5 minutes."""
    (tmp_path / "probe.py").write_text(probe)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    env = {k: v for k, v in env.items() if v is not None}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    proc = subprocess.run(
        command + [str(tmp_path / "probe.py"), str(tmp_path), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for k, v in r0["agent"].items():  # one policy: the same parameters in every process
        torch.testing.assert_close(r1["agent"][k], v, rtol=0, atol=0)
    return proc, r0, r1


TORCHRUN_FLAGS = ["--num-envs", "2", "--num-steps", "32", "--total-timesteps", "256", "--num-minibatches", "2"]
TORCHRUN_FLAGS += ["--update-epochs", "2", "--target-kl", "1.0"]


def test_torchrun_two_processes_train_one_policy(workdir, tmp_path):
    proc, r0, r1 = torchrun(tmp_path, [*TORCHRUN_FLAGS, "--save-model"], port=29517)
    assert (r0["env_seed"], r1["env_seed"]) == (1, 3)  # rank * num_envs apart: no game is played twice
    # 2 processes x 2 envs x 32 steps per iteration: the budget of 256 steps is 2 iterations, SPS over all of them
    assert len(r0["history"]) == 2 and len(r1["history"]) == 2
    ckpt = torch.load(glob.glob("runs/*/checkpoint.pt")[0], weights_only=True)
    assert ckpt["global_step"] == 256 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert "global_step=256" in proc.stdout and proc.stdout.count("finished at") == 1  # rank 0 alone prints


# Rank 1 receives SIGINT just after the processes agreed, at the end of iteration 1, that nobody had one.
LATE_SIGNAL_PROBE = PROBE.replace(
    "result = P.main(",
    """real_end, ends = P.Run.end_iteration, []
def end_iteration(self, *args):
    stop = real_end(self, *args)  # the processes agreed on this iteration inside
    ends.append(1)
    if os.environ["RANK"] == "1" and len(ends) == 1:
        os.kill(os.getpid(), __import__("signal").SIGINT)
    return stop
P.Run.end_iteration = end_iteration
result = P.main(""",
)


def test_torchrun_a_signal_after_the_agreement_stops_every_process_together(workdir, tmp_path):
    """A signal that reaches one process after the processes agreed on this iteration is acted on after the next
    one, by all of them: both checkpoint iteration 2 and exit (once, one rank went to the checkpoint's gather while
    the other trained on: a hang, and no checkpoint)."""
    flags = [*TORCHRUN_FLAGS, "--total-timesteps", "384", "--save-model"]
    proc, r0, r1 = torchrun(tmp_path, flags, port=29523, probe=LATE_SIGNAL_PROBE)
    assert len(r0["history"]) == len(r1["history"]) == 2  # of 3 iterations
    ckpt = torch.load(glob.glob("runs/*/checkpoint.pt")[0], weights_only=True)
    assert ckpt["iteration"] == 2 and "SIGINT: stopped after iteration 2" in proc.stdout


def test_torchrun_a_stopped_and_resumed_run_keeps_the_learning_rate_schedule(workdir, tmp_path):
    """2 processes, 3 iterations, stopped after 2 and resumed unchanged: the resumed iteration logs the rate of the
    uninterrupted run (once, the checkpoint's iterations were counted as one process's, and the resume took the
    "train longer" branch: 1.5x the rate at the defaults resumed halfway). benchmarks.report reads both runs'
    budgets as all processes' steps."""
    flags = [*TORCHRUN_FLAGS, "--total-timesteps", "384", "--save-model"]
    _, straight, _ = torchrun(tmp_path, flags, port=29529)
    rates = [h["charts/learning_rate"] for h in straight["history"]]
    assert rates == pytest.approx([2.5e-4 * (1 - i / 3) for i in range(3)])
    shutil.rmtree("runs")
    torchrun(tmp_path, flags, port=29531, probe=LATE_SIGNAL_PROBE)  # stops after iteration 2
    (path,) = glob.glob("runs/*/checkpoint.pt")
    _, resumed, _ = torchrun(tmp_path, ["--resume", path], port=29533)
    assert [h["charts/learning_rate"] for h in resumed["history"]] == pytest.approx(rates[2:], rel=1e-12)
    (run,) = report.load_runs("runs")
    assert run.budget == 384 and run.last_step == 384


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_step_after_a_lost_life(backend):
    """What each backend plays on the step after a lost life, the one place they are not the same MDP (README):
    envpool a hidden reset inside that step (no-op frames, FIRE: reward 0, its step counter does not move); ale-py
    one real 4-frame step of the action the script sends there, FIRE in Breakout."""
    args = P.Args(env_backend=backend)
    envs, _ = P.make_envs(args, 1, seed=1)
    fire, rng, lost, info_before = P.fire_after_lost_life(args), np.random.default_rng(0), False, None
    assert fire == (1 if backend == "ale" else None)  # Breakout's minimal action set: NOOP, FIRE, RIGHT, LEFT
    for _ in range(3000):
        action = fire if lost and fire is not None else rng.integers(4)
        _, reward, term, trunc, info = envs.step(np.array([action]))
        if lost:
            break
        lost, info_before = bool(term[0] and not P.game_over(backend, info, term, trunc)[0]), info
    envs.close()
    assert lost and info["lives"][0] == info_before["lives"][0]  # the step after the lost life; no life lost in it
    if backend == "envpool":
        assert reward[0] == 0 and info["elapsed_step"][0] == info_before["elapsed_step"][0]
    else:
        assert info["frame_number"][0] == info_before["frame_number"][0] + 4


@pytest.mark.parametrize(
    "env_id, says",
    [("BreakoutNoFrameskip-v4", "as v4, no sticky actions"), ("ALE/Breakout-v5", "gymnasium's ALE/ default is 0.25")],
)
def test_cleanrl_env_ids_play_the_same_game(env_id, says, capsys):
    """CleanRL's ids for Breakout are Breakout-v5 here, with one line at the start saying what that means."""
    assert P.cleanrl_atari_id(P.Args(env_id=env_id)).env_id == "Breakout-v5"
    assert says in capsys.readouterr().out
    assert P.cleanrl_atari_id(P.Args(env_id="Breakout-v5")).env_id == "Breakout-v5"
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_mistyped_game_gets_a_suggestion(backend):
    with pytest.raises(P.UsageError, match="--env-id Breakot-v5: .*; did you mean Breakout-v5"):
        P.env_spaces("Breakot-v5", backend)
