"""What a user meets outside the algorithm: Ctrl-C and SIGTERM on real processes, run folders, "train longer",
unwritable paths, missing extras, corrupt or mismatched checkpoints, rounding of --total-timesteps, terminal output."""

import errno
import fcntl
import glob
import importlib
import itertools
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
import torch
from conftest import ROOT, TEST_ENVS, UPDATE_FUNCTIONS, tiny

# A cheap env per script for subprocess runs (ppo_continuous on Pendulum: no MuJoCo start-up).
CHEAP_ENV = {"ppo_discrete": "CartPole-v1", "ppo_continuous": "Pendulum-v1"}


def start(P, *flags, **popen):
    """Start the script as a user would, unbuffered; stdout and stderr merged unless `popen` says otherwise."""
    command = [
        sys.executable,
        "-u",
        str(ROOT / f"{P.__name__}.py"),
        "--env-id",
        CHEAP_ENV.get(P.__name__, "CartPole-v1"),
    ]
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.Popen(command + ["--total-timesteps", "10000000", *flags], **{**kw, **popen})


def read_until(proc, text, timeout=120):
    """Lines of the process's output up to the first that contains `text` (fails if the process ends first)."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    proc.kill()
    raise AssertionError(f"no line with {text!r} in:\n{''.join(lines)}")


def finish(proc, timeout=120):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


# --- 1. Ctrl-C and SIGTERM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_that_resumes(any_script, workdir, signum):
    """With --save-model, Ctrl-C (or SIGTERM) during training finishes the iteration, writes the checkpoint, prints
    the resume command and exits 0, without a traceback; the checkpoint is that iteration's."""
    P = any_script
    minibatches = ["--num-minibatches", "4"] if P.__name__ == "ppo_continuous" else []  # 1 env: 16 samples each
    proc = start(P, "--save-model", "--num-steps", "64", *minibatches)
    read_until(proc, "global_step=")  # training: the handlers are installed
    proc.send_signal(signum)
    code, out = finish(proc)
    name = signal.Signals(signum).name
    assert code == 0 and "Traceback" not in out, out
    assert f"{name}: stopping after this iteration to save a checkpoint" in out
    (line,) = [line for line in out.splitlines() if "resume with --resume" in line]
    iteration = int(line.split("stopped after iteration ")[1].split(";")[0])
    path = line.split("--resume ")[1]
    assert line.startswith(f"{name}: stopped after iteration") and os.path.isfile(path)
    ckpt = P.load_checkpoint(path)
    assert ckpt["iteration"] == iteration and ckpt["global_step"] == iteration * 64 * ckpt["args"]["num_envs"]


def test_second_ctrl_c_stops_at_once_with_one_line(ppo_discrete, workdir):
    proc = start(ppo_discrete, "--save-model", "--num-steps", "4096")  # long iterations: the second signal lands in one
    read_until(proc, "global_step=")
    proc.send_signal(signal.SIGINT)
    read_until(proc, "SIGINT: stopping after this iteration")
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc)
    assert code == 130 and "Traceback" not in out, out
    assert out.strip().splitlines()[-1].startswith("ppo_discrete.py: stopped at once at global_step=")
    assert "stopped after iteration" not in out


def test_ctrl_c_during_the_final_evaluation_stops_at_once(ppo_discrete, workdir):
    """Training is over and its checkpoint saved: a Ctrl-C during --eval-episodes stops at once, in one line."""
    proc = [sys.executable, "-u", str(ROOT / "ppo_discrete.py"), "--total-timesteps", "2048", "--save-model"]
    proc = subprocess.Popen(
        proc + ["--eval-episodes", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    read_until(proc, "checkpoint saved to")
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc)
    assert code == 130 and "Traceback" not in out and "stopping after this iteration" not in out, out
    assert out.strip().splitlines()[-1].startswith("ppo_discrete.py: stopped at once at global_step=2048")


def test_ctrl_c_without_save_model_is_one_line(any_script, workdir):
    P = any_script
    proc = start(P, stderr=subprocess.PIPE)
    read_until(proc, "global_step=")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    stderr = proc.stderr.read()
    assert proc.returncode == 130
    assert stderr.strip().splitlines() == [
        f"{P.__name__}.py: interrupted at global_step={stderr.split('global_step=')[1].split(';')[0]}; nothing saved "
        "(with --save-model, Ctrl-C saves a checkpoint to resume from)"
    ]
    assert not glob.glob("runs/*/checkpoint.pt")


# --- 2. run folders ----------------------------------------------------------------------------------------------


def test_runs_started_in_the_same_second_get_their_own_folders(any_script, monkeypatch):
    P = any_script
    clock = itertools.count()
    monkeypatch.setattr(P.time, "time", lambda: 1763700000.0 + next(clock) * 1e-6)  # both start in one second
    first = P.main(tiny(P, save_model=True, learning_rate=5e-4))
    second = P.main(tiny(P, save_model=True, learning_rate=1e-3))
    prefix = f"{TEST_ENVS[P.__name__]['env_id']}__{P.__name__}__1__1763700000"
    assert (first["run_name"], second["run_name"]) == (prefix, prefix + "-2")
    for result, lr in ((first, 5e-4), (second, 1e-3)):
        ckpt = P.load_checkpoint(f"{result['run_dir']}/checkpoint.pt")
        assert ckpt["run_name"] == result["run_name"] and ckpt["args"]["learning_rate"] == pytest.approx(lr)
        assert len(glob.glob(f"{result['run_dir']}/events.out.tfevents.*")) == 1


def test_run_folder_is_claimed_atomically(ppo_discrete, workdir):
    """os.mkdir either creates the folder or fails: a name already taken is never shared, even when taken between
    the look and the claim."""
    P = ppo_discrete
    os.makedirs("runs/name")
    os.makedirs("runs/name-2")
    assert P.prepare_run_dir(tiny(P), "name", new=True) == ("name-3", "runs/name-3")
    assert P.prepare_run_dir(tiny(P), "name", new=False) == ("name", "runs/name")  # a resumed run keeps its folder


# --- 4. train longer -----------------------------------------------------------------------------------------------


def test_train_longer_continues_the_learning_rate_without_a_jump(any_script):
    """4 iterations annealed (rates 1, 3/4, 1/2, 1/4 of lr0), then resumed to 8: the rate continues from the last
    one, 1/4 lr0, down to 0 one iteration after the new end: 1/4 * (1 - j/5) for j = 1..4."""
    P = any_script
    first = P.main(tiny(P, save_model=True, anneal_lr=True, learning_rate=1e-3))
    rates = [h["charts/learning_rate"] for h in first["history"]]
    assert rates == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    longer = P.main(P.parse_args(["--resume", f"{first['run_dir']}/checkpoint.pt", "--total-timesteps", "256"]))
    rates = [h["charts/learning_rate"] for h in longer["history"]]
    assert rates == pytest.approx([0.25e-3 * (1 - j / 5) for j in range(1, 5)])
    # and once more, from the checkpoint of iteration 8 (last rate 0.05e-3) to 10 iterations
    again = P.main(P.parse_args(["--resume", f"{first['run_dir']}/checkpoint.pt", "--total-timesteps", "320"]))
    assert [h["charts/learning_rate"] for h in again["history"]] == pytest.approx([0.05e-3 * 2 / 3, 0.05e-3 / 3])


def test_resume_with_a_new_learning_rate_decays_from_it(ppo_discrete):
    P = ppo_discrete
    first = P.main(tiny(P, save_model=True, learning_rate=1e-3))
    ckpt = f"{first['run_dir']}/checkpoint.pt"
    resumed = P.main(P.parse_args(["--resume", ckpt, "--total-timesteps", "256", "--learning-rate", "4e-4"]))
    assert [h["charts/learning_rate"] for h in resumed["history"]] == pytest.approx([4e-4, 3e-4, 2e-4, 1e-4])


# --- 5. unwritable places --------------------------------------------------------------------------------------


def test_unwritable_runs_folder_is_one_line_before_anything_else(any_script, workdir):
    P = any_script
    open("runs", "w").close()  # as root, chmod does not stop writes: a file where the folder must go does
    with pytest.raises(P.UsageError, match=f"^cannot write {workdir}/runs: a file is in the way$"):
        P.main(tiny(P, save_model=True))
    assert os.listdir(workdir) == ["runs"]


def test_unwritable_video_folder_is_refused_and_the_run_folder_removed(ppo_discrete, workdir):
    P = ppo_discrete
    open("videos", "w").close()
    with pytest.raises(P.UsageError, match="^cannot write .*/videos/CartPole-v1__ppo_discrete__1__[0-9]+: a file"):
        P.main(tiny(P, capture_video=True))
    assert sorted(os.listdir(workdir)) == ["runs", "videos"] and os.listdir("runs") == []


def test_checkpoint_path_taken_by_a_folder_is_refused_before_training(ppo_discrete, workdir):
    P = ppo_discrete
    first = P.main(tiny(P, save_model=True))
    ckpt = f"{first['run_dir']}/checkpoint.pt"
    os.rename(ckpt, "saved.pt")
    os.mkdir(ckpt)
    with pytest.raises(P.UsageError, match=f"^cannot write {workdir}/{ckpt}: is a directory"):
        P.main(P.parse_args(["--resume", "saved.pt", "--total-timesteps", "256"]))


def test_evaluating_a_checkpoint_writes_nothing(any_script, workdir):
    """A finished run's checkpoint evaluates where nothing can be written: not next to it, not in runs/."""
    P = any_script
    first = P.main(tiny(P, save_model=True))
    os.rename(f"{first['run_dir']}/checkpoint.pt", "final.pt")
    shutil.rmtree("runs")
    open("runs", "w").close()  # runs/ cannot be written
    before = sorted(os.listdir(workdir))
    result = P.main(P.parse_args(["--resume", "final.pt", "--eval-episodes", "2"]))
    assert set(result["eval"]) == {"greedy", "sampled"} and result["history"] == []
    assert sorted(os.listdir(workdir)) == before


# --- 6. missing extras ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, kw, message",
    [
        ("wandb", dict(track=True), "--track needs wandb: pip install wandb$"),
        (
            "moviepy",
            dict(capture_video=True),
            "--capture-video needs moviepy: pip install moviepy$",
        ),
        ("pygame", dict(capture_video=True), "--capture-video: CartPole-v1 cannot render \\(pygame is not installed"),
    ],
)
def test_missing_extra_is_one_line_naming_it(ppo_discrete, workdir, monkeypatch, module, kw, message):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(ppo_discrete.UsageError, match=message):
        ppo_discrete.main(tiny(ppo_discrete, **kw))
    assert os.listdir(workdir) == []


def test_track_without_a_wandb_login_is_one_line(any_script, workdir, monkeypatch):
    P = any_script
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    (workdir.parent / f"netrc-{P.__name__}").write_text("machine example.com login x password y\n")
    monkeypatch.setenv("NETRC", str(workdir.parent / f"netrc-{P.__name__}"))
    monkeypatch.setenv("HOME", str(workdir.parent))  # no ~/.netrc of this machine's
    with pytest.raises(P.UsageError, match="^--track: .*`wandb login`.*or set WANDB_MODE=offline"):
        P.main(tiny(P, track=True))
    assert os.listdir(workdir) == []


# --- 7. corrupt or mismatched checkpoints --------------------------------------------------------------------------


def test_damaged_checkpoints_are_named_in_one_whole_sentence(any_script, workdir):
    P = any_script
    first = P.main(tiny(P, save_model=True))
    data = open(f"{first['run_dir']}/checkpoint.pt", "rb").read()
    flipped = bytearray(data)
    for i in range(200, 260):
        flipped[i] ^= 0xFF
    open("flipped.pt", "wb").write(bytes(flipped))
    open("truncated.pt", "wb").write(data[: len(data) // 2])
    os.mkdir("folder.pt")
    for path in ("flipped.pt", "truncated.pt"):
        with pytest.raises(P.UsageError, match=f"^--resume {path}: cannot be read: the file is corrupt or truncated$"):
            P.main(P.parse_args(["--resume", path]))
    with pytest.raises(P.UsageError, match="^--resume folder.pt: is a directory, not a checkpoint file$"):
        P.main(P.parse_args(["--resume", "folder.pt"]))


def test_checkpoint_of_another_network_is_refused_before_anything_is_written(any_script, workdir):
    P = any_script
    first = P.main(tiny(P, save_model=True))
    path = f"{first['run_dir']}/checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["agent"]["critic.0.weight"] = torch.zeros(128, ckpt["agent"]["critic.0.weight"].shape[1])
    torch.save(ckpt, path)
    before = {p: os.path.getmtime(p) for p in glob.glob("runs/**", recursive=True)}
    with pytest.raises(
        P.UsageError,
        match=r"its agent does not fit this run's: size mismatch for critic.0.weight: copying a param with shape "
        r"torch.Size\(\[128, \d+\]\) from checkpoint, the shape in current model is torch.Size\(\[64, \d+\]\)\.$",
    ):
        P.main(P.parse_args(["--resume", path, "--total-timesteps", "256"]))
    assert {p: os.path.getmtime(p) for p in glob.glob("runs/**", recursive=True)} == before


def test_flags_that_change_the_saved_agent_are_refused_on_resume(ppo_continuous):
    P = ppo_continuous
    first = P.main(tiny(P, save_model=True))
    with pytest.raises(P.UsageError, match="--norm-obs False differs from the checkpoint's True"):
        P.main(P.parse_args(["--resume", f"{first['run_dir']}/checkpoint.pt", "--no-norm-obs"]))


# --- 8. rounding ----------------------------------------------------------------------------------------------------


def test_total_timesteps_not_a_multiple_of_the_batch_is_said_at_start(any_script, capsys):
    P = any_script
    result = P.main(tiny(P, total_timesteps=100))
    first, second = capsys.readouterr().out.splitlines()[:2]  # after the line naming the log folder
    assert first.startswith("logging to runs/")
    assert second == "--total-timesteps 100 is not a multiple of the batch size 32: training 96 steps (3 iterations)"
    assert len(result["history"]) == 3
    P.main(tiny(P, total_timesteps=96))
    assert "not a multiple" not in capsys.readouterr().out


# --- 10. terminal output, video, MuJoCo --------------------------------------------------------------------------


def test_final_line_is_not_glued_to_the_progress_bar(ppo_discrete, workdir):
    """On a terminal the progress bar is closed (ending its line) before the summary is printed."""
    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "ppo_discrete.py"), "--total-timesteps", "2048"],
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
    )
    os.close(child_fd)
    output = b""
    while True:
        ready, _, _ = select.select([main_fd], [], [], 120)
        try:
            chunk = os.read(main_fd, 4096) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        output += chunk
    proc.wait(timeout=60)
    os.close(main_fd)
    text = output.decode(errors="replace")
    assert proc.returncode == 0 and "finished at global_step=2048" in text
    before = text[: text.index("finished at")]
    assert "step/s" in before  # the bar was drawn
    assert before.endswith("\n")  # and its line ended before the summary


def test_video_capture_prints_no_sdl_error(ppo_discrete, workdir):
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "SDL_VIDEODRIVER", "DISPLAY")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "ppo_discrete.py"), "--capture-video", "--total-timesteps", "1024"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "XDG_RUNTIME_DIR" not in proc.stderr + proc.stdout
    assert glob.glob("videos/*/*.mp4")


def test_mujoco_deprecation_notices_and_log_file_are_gone(ppo_continuous, workdir, capfd):
    """HalfCheetah's model file uses an attribute MuJoCo 4 deprecates: nothing printed, no MUJOCO_LOG.TXT."""
    ppo_continuous.env_spaces("HalfCheetah-v5", "gymnasium")
    out, err = capfd.readouterr()
    assert "deprecated" not in out + err
    assert not os.path.exists("MUJOCO_LOG.TXT")


# --- torchrun ----------------------------------------------------------------------------------------------------

ONE_PROCESS_SCRIPTS = ["ppo_discrete", "ppo_continuous", "ppo_lstm", "trpo_baseline", "a2c_baseline", "ppo_rlhf"]


@pytest.mark.parametrize("name", ONE_PROCESS_SCRIPTS)
def test_a_one_process_script_refuses_torchrun_before_writing(name, monkeypatch, workdir):
    """Only ppo_atari.py trains data-parallel: under torchrun (WORLD_SIZE > 1) the others refuse in one line, before
    anything is written (once, rank 1 crashed with a TypeError in Run.begin and left a run folder behind)."""
    P = importlib.import_module(name)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(P.UsageError, match="^torchrun: this script trains in one process, run it with python"):
        P.main(P.Args())
    assert os.listdir(workdir) == []
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1 is one process: it runs
    P.validate_args(getattr(P, "with_task_defaults", lambda args: args)(P.Args()))


def test_torchrun_ppo_rlhf_exits_with_one_line_per_process(workdir):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*command, str(ROOT / "ppo_rlhf.py")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "ppo_rlhf.py: error:" in line]
    assert errors and "torchrun: this script trains in one process" in errors[0], proc.stderr[-2000:]
    assert "TypeError" not in proc.stderr and os.listdir(workdir) == []  # torchrun's own report follows the line


def test_a_renamed_copy_resumes_its_own_checkpoints_and_refuses_another_scripts(workdir):
    """Copying a script under a new name is what the project is for: the copy's checkpoints resume with the copy."""
    shutil.copy(ROOT / "ppo_discrete.py", "my_ppo.py")
    command = [sys.executable, "my_ppo.py", "--num-envs", "2", "--num-steps", "16", "--total-timesteps", "64"]
    done = subprocess.run([*command, "--save-model"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (path,) = glob.glob("runs/CartPole-v1__my_ppo__1__*/checkpoint.pt")
    done = subprocess.run(
        [sys.executable, "my_ppo.py", "--resume", path, "--total-timesteps", "128"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "resumed from iteration 2 (global_step 64)" in done.stdout, done.stderr
    torch.save({**torch.load(path, weights_only=True), "format": "ppo_continuous.py checkpoint v3"}, "other.pt")
    done = subprocess.run([sys.executable, "my_ppo.py", "--resume", "other.pt"], capture_output=True, text=True)
    assert done.returncode == 1
    assert (
        done.stderr.strip() == "my_ppo.py: error: --resume other.pt: not a checkpoint of this script (ppo_discrete.py)"
    )


# --- non-finite numbers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_float_flags_are_refused(any_script, value, workdir):
    """nan and infinities pass every comparison check (inf > 0): the plumbing refuses them for every float flag."""
    P = any_script
    with pytest.raises(P.UsageError, match=f"^--learning-rate must be a finite number, got {value}$"):
        P.main(tiny(P, learning_rate=float(value)))
    assert os.listdir(workdir) == []


@pytest.mark.parametrize("name", ["ppo_discrete", "ppo_continuous", "ppo_atari"])
def test_minibatches_too_small_to_normalise_are_refused(name):
    """512 steps in 256 minibatches: 2 samples each, fewer once the reset steps leave, and the per-minibatch
    advantage normalisation divides by a zero or nan std; every weight turned nan."""
    P = importlib.import_module(name)
    with pytest.raises(P.UsageError, match="^--num-minibatches 256 leaves 2 samples a minibatch: --norm-adv needs"):
        P.main(P.Args(num_envs=4, num_steps=128, num_minibatches=256))
    P.validate_args(P.Args(num_envs=4, num_steps=128, num_minibatches=256, norm_adv=False))


def test_a_run_whose_parameters_turn_nan_stops_before_its_next_checkpoint(any_script, monkeypatch, workdir):
    """The parameters become nan in iteration 3: the run stops there, naming the iteration and the parameter, and
    the checkpoint of iteration 2 is left as it was."""
    P = any_script
    name = UPDATE_FUNCTIONS[P.__name__]
    real_update, calls = getattr(P, name), []

    def update(agent, *a, **kw):
        calls.append(1)
        if len(calls) == 3:  # the update of iteration 3 starts from nan weights
            next(agent.parameters()).data.fill_(float("nan"))
        return real_update(agent, *a, **kw)

    monkeypatch.setattr(P, name, update)
    with pytest.raises(P.TrainingError) as error:
        P.main(tiny(P, save_model=True, checkpoint_every=2))
    (path,) = glob.glob("runs/*/checkpoint.pt")
    assert str(error.value).startswith("iteration 3: ")
    assert str(error.value).endswith(f" is not finite, training stopped; {path} is the last good one")
    assert torch.load(path, weights_only=True)["iteration"] == 2


# --- one run per folder, disk faults -------------------------------------------------------------------------------


def test_a_second_resume_of_a_running_checkpoint_is_refused(any_script, workdir):
    """While one run holds its folder (a process resuming it: here an exclusive flock on the folder's .lock from
    another open file, as that process holds it), a second resume of the same checkpoint refuses in one line and
    writes nothing; once released, it resumes."""
    P = any_script
    first = P.main(tiny(P, save_model=True))
    ckpt = f"{first['run_dir']}/checkpoint.pt"
    before = open(ckpt, "rb").read()
    with open(f"{first['run_dir']}/.lock", "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(P.UsageError, match=f"^{workdir}/{first['run_dir']} is in use by another run: resume"):
            P.main(P.parse_args(["--resume", ckpt, "--total-timesteps", "256"]))
    assert open(ckpt, "rb").read() == before
    assert len(P.main(P.parse_args(["--resume", ckpt, "--total-timesteps", "256"]))["history"]) == 4


def test_two_resumes_at_once_in_two_processes(workdir):
    first = subprocess.run(
        [sys.executable, str(ROOT / "ppo_discrete.py"), "--total-timesteps", "2048", "--save-model"],
        capture_output=True,
        text=True,
    )
    (path,) = glob.glob("runs/*/checkpoint.pt")
    proc = subprocess.Popen(
        [sys.executable, "-u", str(ROOT / "ppo_discrete.py"), "--resume", path, "--total-timesteps", "10000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    read_until(proc, "resumed from iteration")
    second = subprocess.run(
        [sys.executable, str(ROOT / "ppo_discrete.py"), "--resume", path, "--total-timesteps", "10000000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    proc.kill()
    proc.communicate()
    assert first.returncode == 0 and second.returncode == 1
    assert second.stderr.strip().endswith("is in use by another run: resume it once at a time"), second.stderr


@pytest.mark.parametrize("errno_, reason", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only")])
def test_a_checkpoint_the_disk_refuses_is_one_line_naming_the_path(any_script, monkeypatch, workdir, errno_, reason):
    """A full disk or a file system remounted read-only while checkpointing: one line naming the file, the last
    checkpoint kept, no temporary file left behind."""
    P = any_script
    first = P.main(tiny(P, save_model=True))
    path = f"{workdir}/{first['run_dir']}/checkpoint.pt"
    before = open(path, "rb").read()

    def full(obj, f, *a, **kw):
        f.write(b"partial")
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(
        P.TrainingError, match=f"^cannot write {path}: {reason}.* \\(the last checkpoint there is kept\\)$"
    ):
        P.main(P.parse_args(["--resume", path, "--total-timesteps", "256"]))
    assert open(path, "rb").read() == before and os.listdir(os.path.dirname(path)).count("checkpoint.pt") == 1
    assert not glob.glob(f"{path}.tmp*")


@pytest.mark.parametrize("name", ["ppo_continuous", "trpo_baseline", "a2c_baseline"])
def test_the_video_check_imports_triton_before_the_first_frame(name, monkeypatch, tmp_path):
    """With torch's CUDA build (which brings triton) on a CPU machine, importing triton after MuJoCo has rendered
    a frame through EGL crashes the process with SIGSEGV and no message (torch.compile imports it); imported
    before, everything works (checked by hand in such an environment: HalfCheetah-v5 --capture-video then exit 0
    with videos, and exit 139 without the import). Here a stand-in triton records when it is imported."""
    P = importlib.import_module(name)
    order = []
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text("import builtins\nbuiltins._order.append('triton')\n")
    monkeypatch.setattr("builtins._order", order, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    real_make = P.gym.make

    def make(*a, **kw):
        env = real_make(*a, **kw)
        real_render = env.render
        env.render = lambda: (order.append("render"), real_render())[1]
        return env

    monkeypatch.setattr(P.gym, "make", make)
    P.check_video(P.Args(env_id="Pendulum-v1", capture_video=True))
    assert order == ["triton", "render"]


def test_an_env_that_cannot_be_made_on_this_mujoco_is_one_line():
    P = importlib.import_module("ppo_continuous")
    with pytest.raises(P.UsageError, match=r"^--env-id Pusher-v4: cannot be made \(`Pusher-v4` is only supported on"):
        P.main(P.Args(env_id="Pusher-v4"))


def test_the_first_line_says_where_the_logs_go(any_script, capsys, workdir):
    P = any_script
    result = P.main(tiny(P))
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"logging to {result['run_dir']} (see it with: tensorboard --logdir runs)"
