"""Stopping a training run cleanly and resuming it exactly: SIGTERM (and every stop signal) to a training stage,
to `dvc repro` (the training process must not outlive it), and by every route (the launcher, a rank's process group,
every process of the job) to two gloo ranks with persistent loader workers; one run per resume folder; checkpoint
files that are damaged, incomplete or hostile, and a disk that fills during a checkpoint: one line each, nothing
written to the outputs, the previous checkpoint kept."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline import procfs, stop_signals
from pipeline.cluster.process_tree import descendants
from pipeline.config import ParamsError, load_pretrain
from pipeline.stages import pretrain
from pipeline.training import checkpoint, folder_lock, signals

from .test_e2e import _env as e2e_env
from .test_e2e import sh, source_copy
from .tiny import ROOT, prepare_synthetic, tiny_params, write_params

NAME = "pretrain@n12-linear-0"
STOP_LINE = re.compile(
    rf"{re.escape(NAME)}: stopped (by SIG\w+|because .+ ended) at (epoch (\d+) step (\d+)|the end of epoch \d+ "
    r"\(before the final evaluation\)); resume state saved to (\S+); run dvc repro to continue"
)
STEPS = 4  # training steps per epoch of the tiny profile: 72 training images, batch 16


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("prepared"))


def _argv(run: Path, params: Path, data: Path) -> list[str]:
    """A pretraining instance writing to ``run``/out, its resume state in ``run``/resume."""
    out = run / "out"
    return [
        "--params", str(params), "--backbone", "n12", "--variant", "linear", "--seed", "0", "--data", str(data),
        "--weights-out", str(out / "weights"), "--metrics", str(out / "metrics.json"),
        "--record", str(out / "record.json"),
        "--curves", str(out / "curves.csv"), "--provenance", str(out / "provenance.json"),
        "--resume-dir", str(run / "resume"),
    ]  # fmt: skip


def _outputs(run: Path) -> dict[str, bytes]:
    out = run / "out"
    names = ["metrics.json", "record.json", "curves.csv", "weights/raw.safetensors", "weights/ema.safetensors"]
    return {name: (out / name).read_bytes() for name in names if (out / name).exists()}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PET_", "MASTER_", "DVC_"))}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _whole(tmp: Path, params: Path, data: Path) -> dict[str, bytes]:
    pretrain.main(_argv(tmp / "whole", params, data))
    return _outputs(tmp / "whole")


def _stop_at(monkeypatch, call: int, signum: int = signal.SIGTERM) -> None:
    """The run's stop requests: nothing until the ``call``-th look (one before every step, one after the last
    epoch, one after the final evaluation), then ``signum``."""
    calls = []

    def code(self) -> int:
        calls.append(1)
        return signum if len(calls) >= call else 0

    monkeypatch.setattr(signals.StopRequests, "code", code)


def _stopped(capsys, excinfo, resume: Path) -> re.Match:
    assert excinfo.value.code == 128 + signal.SIGTERM
    lines = [line for line in capsys.readouterr().err.splitlines() if ": stopped " in line]
    assert len(lines) == 1 and (found := STOP_LINE.fullmatch(lines[0])), lines
    assert found.group(5) == str(resume)
    return found


# ------------------------------------------------------------------------------------------------------------
# Where a run stops, and its resume.


@pytest.mark.parametrize(
    ("call", "epoch", "step"),
    [(6, 1, 1), (5, 1, 0), (3 * STEPS + 1, 3, 0), (3 * STEPS + 2, 3, 0)],
    ids=["mid-epoch", "epoch-boundary", "before-final-evaluation", "during-final-evaluation"],
)
def test_a_stop_anywhere_saves_the_state_there_and_resumes_exactly(tmp_path, synthetic, monkeypatch, capsys, call,
                                                                   epoch, step):  # fmt: skip
    """Checkpoints every 2 epochs, so the stop itself writes the state (mid-epoch: the steps done and this rank's
    sums of the epoch so far); the resumed run ends byte-identical to an uninterrupted one."""
    updates = tiny_params(pretrain={"epochs": 3}, runtime={"checkpoint_every": 2})
    params = write_params(tmp_path / "params.yaml", updates)
    whole = _whole(tmp_path, params, synthetic)
    argv = _argv(tmp_path / "stopped", params, synthetic)
    resume = tmp_path / "stopped" / "resume"
    with monkeypatch.context() as patch:
        _stop_at(patch, call)
        with pytest.raises(SystemExit) as excinfo:
            pretrain.main(argv)
    found = _stopped(capsys, excinfo, resume)
    if epoch < 3:
        assert (int(found.group(3)), int(found.group(4))) == (epoch + 1, step)
    saved = torch.load(resume / "checkpoint.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (epoch, step)
    assert {p.name for p in resume.glob("rank-*")} == {checkpoint.rank_file(resume, 0, epoch, step).name}
    assert not (tmp_path / "stopped" / "out" / "metrics.json").exists()
    pretrain.main(argv)
    assert _outputs(tmp_path / "stopped") == whole
    assert not resume.exists()


def test_a_mid_epoch_stop_resumes_exactly_on_the_timm_path_with_workers(tmp_path, synthetic, monkeypatch, capsys):
    """Per-sample transforms (RandAugment, random erasing) in 2 loader workers, Mixup/CutMix, EMA, drop path: the
    resumed epoch skips the batches trained on before the stop and ends byte-identical."""
    augment = {**tiny_params()["pretrain"]["recipe"]["augment"], "mode": "timm", "auto_augment": "rand-m9-mstd0.5",
               "re_prob": 0.25, "scale_min": 0.5, "hflip": 0.5}  # fmt: skip
    recipe = {"epochs": 2, "augment": augment, "mixup": 0.8, "cutmix": 1.0, "ema_decay": 0.9}
    updates = tiny_params(pretrain=recipe, model={"drop_path_rate": 0.1}, runtime={"workers": 2})
    params = write_params(tmp_path / "params.yaml", updates)
    whole = _whole(tmp_path, params, synthetic)
    argv = _argv(tmp_path / "stopped", params, synthetic)
    with monkeypatch.context() as patch:
        _stop_at(patch, STEPS + 3)
        with pytest.raises(SystemExit) as excinfo:
            pretrain.main(argv)
    assert _stopped(capsys, excinfo, tmp_path / "stopped" / "resume").group(2) == "epoch 2 step 2"
    pretrain.main(argv)
    assert _outputs(tmp_path / "stopped") == whole and "ema.safetensors" in str(list(whole))


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def test_sigterm_to_a_training_stage(tmp_path, synthetic):
    """SIGTERM after the first epoch: the stage finishes its step, saves its state, exits with 143 and one line,
    writes no metrics; while it ran, a second run of the instance was refused with its PID; the re-run resumes
    and ends byte-identical to an uninterrupted run."""
    params = write_params(tmp_path / "params.yaml", tiny_params(pretrain={"epochs": 12}))
    whole = _whole(tmp_path, params, synthetic)
    argv = _argv(tmp_path / "stopped", params, synthetic)
    resume, log = tmp_path / "stopped" / "resume", tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages.pretrain", *argv], cwd=ROOT, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    try:
        _wait_for(proc, lambda: f"{NAME} epoch 1/12" in log.read_text(), "epoch 1")
        with pytest.raises(SystemExit) as excinfo:  # a second run of the instance meanwhile
            pretrain.main(_argv(tmp_path / "stopped", params, synthetic))
        assert excinfo.value.code == (
            f"pretrain: error: {resume} is in use by PID {proc.pid} (another run of this instance); wait for it or "
            "stop it"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    err = log.read_text()
    lines = [line for line in err.splitlines() if ": stopped " in line]
    assert len(lines) == 1 and (found := STOP_LINE.fullmatch(lines[0])) and "Traceback" not in err, err[-3000:]
    assert found.group(1) == "by SIGTERM" and found.group(5) == str(resume)
    saved = torch.load(resume / "checkpoint.pt", weights_only=True)
    assert found.group(2) == f"epoch {saved['epoch'] + 1} step {saved['step']}" and 1 <= saved["epoch"] < 12
    assert not (tmp_path / "stopped" / "out" / "metrics.json").exists()
    pretrain.main(argv)
    assert _outputs(tmp_path / "stopped") == whole


# ------------------------------------------------------------------------------------------------------------
# The stop requests and the lock.


def test_stop_signals_set_a_flag_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGUSR1)
    with signals.StopRequests(ancestors=[]) as stop:
        assert stop.code() == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
        time.sleep(0.05)
        assert stop.code() == signal.SIGUSR1
        line = str(stop.stopped(0, where="epoch 2 step 3", folder=Path("r")))
    assert line == "stopped by SIGUSR1 at epoch 2 step 3; resume state saved to r; run dvc repro to continue"
    assert signal.getsignal(signal.SIGUSR1) == before
    with signals.StopRequests(ancestors=[], linger=True) as stop:  # a torchrun worker about to exit
        stop.stopped(signal.SIGTERM, where="epoch 1 step 0", folder=Path("r"))
    try:
        assert {signal.getsignal(s) for s in stop.signals} == {signal.SIG_IGN}
    finally:
        for signum in stop.signals:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


def _shielded(ready) -> None:  # a stand-in DataLoader worker: shielded, then waits to be ended
    stop_signals.shield_worker()
    ready.set()
    time.sleep(60)


def test_a_loader_worker_leaves_stop_signals_to_its_rank_but_obeys_its_rank():
    """Stop signals from anyone but the worker's parent (a `kill -- -PGID`, SLURM or systemd signalling the whole
    job) are the rank's to act on: the worker lives on; the parent's SIGTERM (the DataLoader ending a worker that
    did not exit in time) ends it with status 0, as torch's own worker handler does."""
    import multiprocessing

    ready = multiprocessing.Event()
    worker = multiprocessing.Process(target=_shielded, args=(ready,), daemon=True)
    worker.start()
    try:
        assert ready.wait(30)
        for name in stop_signals.NAMES:  # from another process, as a group or cgroup kill sends them
            subprocess.run(["kill", f"-{name.removeprefix('SIG')}", str(worker.pid)], check=True)
        time.sleep(0.3)
        assert worker.is_alive() and worker.exitcode is None
        worker.terminate()  # SIGTERM from its parent
        worker.join(10)
        assert worker.exitcode == 0
    finally:
        worker.kill()
        worker.join()


@pytest.mark.parametrize("inherited", [signal.default_int_handler, signal.SIG_IGN], ids=["terminal", "nohup"])
def test_ctrl_c_is_a_stop_request_not_a_keyboard_interrupt(inherited):
    """Whatever this process inherited (a terminal's shell: Python's KeyboardInterrupt handler; nohup or a
    background shell: SIGINT ignored), SIGINT is a stop request inside and what was there comes back after."""
    previous = signal.signal(signal.SIGINT, inherited)
    try:
        with signals.StopRequests(ancestors=[]) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert stop.code() == signal.SIGINT
            assert stop.stopped(0, where="epoch 1 step 0", folder=Path("r")).status == 130
        assert signal.getsignal(signal.SIGINT) is inherited
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_end_of_a_watched_ancestor_is_a_stop_request(monkeypatch):
    monkeypatch.setattr(signals, "POLL_SECONDS", 0.0)
    sleeper = subprocess.Popen(["sleep", "60"])
    started = procfs.stat(sleeper.pid)[2]
    with signals.StopRequests(ancestors=[(sleeper.pid, started, "dvc")]) as stop:
        assert stop.code() == 0
        sleeper.terminate()
        time.sleep(0.1)  # a zombie until reaped: ended all the same
        assert stop.code() == signals.ANCESTOR_ENDED
        sleeper.wait()
        stopped = stop.stopped(0, where="epoch 1 step 0", folder=Path("r"))
    assert stopped.status == signals.ANCESTOR_ENDED
    assert stopped.line.startswith(f"stopped because dvc (PID {sleeper.pid}) ended at epoch 1 step 0;")


def test_under_dvc_the_watch_reaches_the_dvc_process(tmp_path):
    """DVC runs a command through `$SHELL -c`; here a program named dvc starts a shell that starts Python."""
    fake = tmp_path / "dvc"
    code = "from pipeline.training.signals import watched_ancestors; print([a[2] for a in watched_ancestors()])"
    fake.write_text(f"#!/bin/sh\n/bin/sh -c '{sys.executable} -c \"{code}\"; true'\n")
    fake.chmod(0o755)
    done = subprocess.run([str(fake)], env=_env(DVC_STAGE="x"), capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[0].endswith("'dvc']"), done.stdout
    alone = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    assert alone.stdout.strip() == "[]", "a run started by hand watches nothing"


@pytest.mark.parametrize("code", sorted(folder_lock.NO_LOCKS), ids=lambda c: errno.errorcode[c])
def test_a_filesystem_without_locks_is_one_line_with_the_remedy(tmp_path, monkeypatch, code):
    """flock's answer on Lustre mounted noflock (ENOSYS), NFS without lockd (ENOLCK), FUSE (EOPNOTSUPP): the
    syscall's documented failures, raised here by a stand-in fcntl.flock (no such filesystem on this machine)."""

    def no_locks(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(folder_lock.fcntl, "flock", no_locks)
    folder = tmp_path / "resume"
    with pytest.raises(ValueError) as excinfo:
        with folder_lock.hold(folder):
            pass
    line = str(excinfo.value)
    assert line.startswith(f"cannot lock {folder / folder_lock.LOCK}: its filesystem does not support file locks (")
    assert "-o flock" in line and "dvc config core.hardlink_lock true" in line and "\n" not in line


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    folder = tmp_path / "resume"
    script = "from pipeline.training import folder_lock; import pathlib, time\n"
    script += f"with folder_lock.hold(pathlib.Path('{folder}')):\n"
    holder = subprocess.Popen([sys.executable, "-c", script + "    print('held', flush=True); time.sleep(60)"],
                              env=_env(), stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ValueError, match=rf"^{re.escape(str(folder))} is in use by PID {holder.pid} \(another"):
            with folder_lock.hold(folder):
                pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with folder_lock.hold(folder):  # SIGKILL left no stale lock
        assert (folder / folder_lock.LOCK).read_text() == f"{os.getpid()}\n"


def test_every_stop_signal_is_handled_and_none_is_configurable(tmp_path):
    """The ranks handle every signal the launcher forwards (one list, pipeline.stop_signals); the old
    runtime.stop_signals is refused by name; a PET_SIGNALS_TO_HANDLE naming a signal the ranks do not handle is
    one line."""
    from pipeline.training import launch

    with signals.StopRequests(ancestors=[]) as stop:
        assert sorted(stop.signals) == sorted(getattr(signal, n) for n in stop_signals.NAMES)
    assert launch._forwarded({}) == "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"
    assert launch._forwarded({"PET_SIGNALS_TO_HANDLE": "SIGTERM, SIGUSR2"}) == "SIGTERM,SIGUSR2"
    with pytest.raises(SystemExit, match=r"^launch: error: PET_SIGNALS_TO_HANDLE='SIGTERM,SIGXCPU' names SIGXCPU, "):
        launch._forwarded({"PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGXCPU"})
    params = write_params(tmp_path / "params.yaml", tiny_params(runtime={"stop_signals": ["SIGUSR1"]}))
    with pytest.raises(ParamsError, match=r"^runtime: unknown key\(s\) stop_signals; expected: threads, "):
        load_pretrain(params, "n12", "linear", 0)


# ------------------------------------------------------------------------------------------------------------
# Checkpoint files checked where they are read.


@pytest.fixture(scope="module")
def stopped_state(tmp_path_factory, synthetic) -> tuple[Path, Path]:
    """``(params, resume folder)`` of a run stopped in its second epoch (step 1)."""
    tmp = tmp_path_factory.mktemp("stopped")
    params = write_params(tmp / "params.yaml", tiny_params(pretrain={"epochs": 3}))
    with pytest.MonkeyPatch.context() as patch:
        _stop_at(patch, STEPS + 2)
        with pytest.raises(SystemExit):
            pretrain.main(_argv(tmp / "run", params, synthetic))
    return params, tmp / "run" / "resume"


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop(key: str):
    def damage(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        del state[key]
        torch.save(state, path)

    return damage


@pytest.mark.parametrize(
    ("file", "damage", "problem"),
    [
        ("checkpoint.pt", _truncate, "is unreadable, truncated or corrupt (RuntimeError: PytorchStreamReader failed "
         "reading zip archive: failed finding central directory)"),
        ("checkpoint.pt", _drop("fingerprint"), "is incomplete: it has no fingerprint"),
        ("checkpoint.pt", _drop("optimizer"), "is incomplete: it has no optimizer"),
        ("rank-0-epoch-1-step-1.pt", _truncate, "is unreadable, truncated or corrupt"),
        ("rank-0-epoch-1-step-1.pt", _drop("partial"), "is incomplete: it has no partial"),
        ("rank-0-epoch-1-step-1.pt", Path.unlink, "(epoch 1 step 1) has no state for rank 0 "
         "(rank-0-epoch-1-step-1.pt is missing"),
        ("checkpoint.pt", "hostile", "holds objects other than tensors and plain values and was refused unread"),
    ],
    ids=["truncated", "no-fingerprint", "no-optimizer", "rank-truncated", "rank-incomplete", "rank-missing",
         "hostile"],
)  # fmt: skip
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, synthetic, stopped_state, file, damage, problem):
    params, saved = stopped_state
    run = tmp_path / "run"
    shutil.copytree(saved, run / "resume")
    path = run / "resume" / file
    marker = tmp_path / "owned"
    if damage == "hostile":
        torch.save({"fingerprint": _Hostile(marker), "epoch": 1}, path)
    else:
        damage(path)
    with pytest.raises(SystemExit) as excinfo:
        pretrain.main(_argv(run, params, synthetic))
    message = str(excinfo.value.code)
    shown = run / "resume" / ("checkpoint.pt" if damage is Path.unlink else file)
    assert message.startswith(f"pretrain: error: checkpoint {shown} {problem}"), message
    assert message.endswith(f"delete {run / 'resume'} to start over") and "\n" not in message
    assert "weights_only" not in message and not marker.exists()
    assert not (run / "out").exists(), "nothing written to the outputs"


# ------------------------------------------------------------------------------------------------------------
# The disk: checked before a run; full during a checkpoint.


def test_a_disk_without_room_for_a_checkpoint_is_refused_before_training(tmp_path, synthetic, monkeypatch):
    params = write_params(tmp_path / "params.yaml", tiny_params())
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 4096))
    with pytest.raises(SystemExit) as excinfo:
        pretrain.main(_argv(tmp_path / "run", params, synthetic))
    message = str(excinfo.value.code)
    assert re.fullmatch(
        rf"pretrain: error: {re.escape(str(tmp_path / 'run' / 'resume'))}: a resume checkpoint needs about "
        r"[\d.]+ MB but only 0.0 MB are free there; free space or move the workspace before training",
        message,
    ), message
    assert not (tmp_path / "run" / "out").exists()


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(tmp_path, synthetic):
    params = write_params(tmp_path / "params.yaml", tiny_params())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "out").write_text("a file where the outputs' folder should be")
    with pytest.raises(SystemExit) as excinfo:
        pretrain.main(_argv(tmp_path / "run", params, synthetic))
    assert str(excinfo.value.code) == (
        f"pretrain: error: cannot write to {tmp_path / 'run' / 'out' / 'weights'}: Not a directory; the run writes "
        "there"
    )


def _small_disk(folder: Path, size: int) -> bool:
    """A tmpfs of ``size`` bytes at ``folder``, if this machine lets us mount one (root in most containers)."""
    folder.mkdir(parents=True)
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def _fail_second_checkpoint(monkeypatch, code: int) -> None:
    """The second write of checkpoint.pt stops half-way with ``code`` (as a full disk or a revoked permission)."""
    real, writes = checkpoint._write, []

    def write(fd: int, data) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".checkpoint.pt."):
            writes.append(1)
            if len(writes) == 2:
                os.write(fd, bytes(data[: len(data) // 2]))
                os.close(fd)
                raise OSError(code, os.strerror(code))
        real(fd, data)

    monkeypatch.setattr(checkpoint, "_write", write)


@pytest.mark.parametrize("how", ["tmpfs", "ENOSPC", "EACCES"])
def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, synthetic, stopped_state, monkeypatch,
                                                                 how):  # fmt: skip
    """The second checkpoint cannot be written (a tmpfs with room for one and a half, or an injected error): one
    line naming checkpoint.pt, no temporary file left, and the first checkpoint resumes to the uninterrupted
    result."""
    params = write_params(tmp_path / "params.yaml", tiny_params(pretrain={"epochs": 3}))
    run, resume = tmp_path / "run", tmp_path / "run" / "resume"
    if how == "tmpfs":
        one = (stopped_state[1] / "checkpoint.pt").stat().st_size
        needs = checkpoint.size_estimate(*_model_and_ema(params))
        size = max(3 * one // 2, needs) + 6 * 4096  # the lock, two rank files, tmpfs' pages
        assert size < 2 * one + 4 * 4096, "room for two checkpoints: the test would prove nothing"
        if not _small_disk(resume, size):
            pytest.skip("cannot mount a tmpfs here; the injected errors cover the same path")
    else:
        _fail_second_checkpoint(monkeypatch, getattr(errno, how))
    try:
        with pytest.raises(SystemExit) as excinfo:
            pretrain.main(_argv(run, params, synthetic))
        reason = {"tmpfs": "no space left on device", "ENOSPC": "no space left on device",
                  "EACCES": "Permission denied"}[how]  # fmt: skip
        assert re.fullmatch(
            rf"pretrain: error: cannot write checkpoint {re.escape(str(resume / 'checkpoint.pt'))}: {reason} \(it "
            rf"needs [\d.]+ MB\); the previous resume state in {re.escape(str(resume))} is kept: free space or make "
            "the folder writable, then run dvc repro to resume",
            str(excinfo.value.code),
        ), excinfo.value.code
        assert not [p.name for p in resume.iterdir() if p.name.endswith(".tmp")]
        assert torch.load(resume / "checkpoint.pt", weights_only=True)["epoch"] == 1
        shutil.copytree(resume, tmp_path / "kept" / "resume")
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(resume)], check=True)
    monkeypatch.undo()
    pretrain.main(_argv(tmp_path / "kept", params, synthetic))
    assert _outputs(tmp_path / "kept") == _whole(tmp_path, params, synthetic)


def _model_and_ema(params: Path):
    from pipeline.training import model as models

    run = load_pretrain(params, "n12", "linear", 0)
    return models.build(run.net, 3), None


# ------------------------------------------------------------------------------------------------------------
# Under the launcher, and under dvc repro.


def _processes_with(text: str, cwd: Path | None = None) -> list[int]:
    """The live processes whose command line holds ``text`` (and whose working folder is ``cwd``)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            here = cwd is None or Path(os.readlink(entry / "cwd")) == cwd
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in argv and here and state != "Z" and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def _gone(text: str, cwd: Path | None = None, timeout: float = 30) -> float:
    """Seconds until no process matches (fails after ``timeout``)."""
    started = time.time()
    while _processes_with(text, cwd):
        assert time.time() - started < timeout, f"still running after {timeout} s: {_processes_with(text, cwd)}"
        time.sleep(0.05)
    return time.time() - started


ROUTES = [
    ("launcher", "SIGTERM"),  # scancel, kill, torchrun's own stop
    ("launcher", "SIGUSR2"),  # SLURM's warning through submitit's srun step
    ("launcher", "SIGHUP"),  # a closed terminal
    ("group", "SIGTERM"),  # `kill -- -PGID` of a rank: the rank and its loader workers
    ("job", "SIGUSR1"),  # every process at once: SLURM under proctrack/cgroup, systemd's KillMode=control-group
]


@pytest.fixture(scope="module")
def launched(tmp_path_factory, synthetic):
    """Two gloo ranks under the launcher, the timm loader path with a persistent worker per loader: the params, how
    to run an instance into a folder, and the outputs of one never stopped."""
    tmp = tmp_path_factory.mktemp("launched")
    augment = {**tiny_params()["pretrain"]["recipe"]["augment"], "mode": "timm"}
    updates = tiny_params(pretrain={"epochs": 16, "augment": augment}, runtime={"workers": 1})
    params = write_params(tmp / "params.yaml", updates)
    launch = [sys.executable, "-m", "pipeline.training.launch", "--nproc-per-node", "2"]

    def command(run: Path) -> list[str]:
        return [*launch, "-m", "pipeline.stages.pretrain", *_argv(run, params, synthetic)]

    done = subprocess.run(command(tmp / "whole"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return command, _outputs(tmp / "whole")


def _send(route: str, signum: int, launcher: int) -> None:
    tree = descendants(launcher)
    parents = {p: (procfs.stat(p) or (0, 0))[1] for p in tree}
    ranks = [p for p in tree if parents[p] == launcher]
    workers = sorted(list(parents.values()).count(r) for r in ranks)
    expected = "2 ranks, each with a worker of its training, evaluation and test loaders"
    assert len(ranks) == 2 and workers == [3, 3] and len(tree) == 8, f"expected {expected}: {tree}"
    if route == "launcher":
        os.kill(launcher, signum)
    elif route == "group":
        os.killpg(os.getpgid(ranks[0]), signum)
    else:
        for pid in [launcher, *tree]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


@pytest.mark.parametrize(("route", "name"), ROUTES, ids=[f"{r}-{n}" for r, n in ROUTES])
def test_every_route_of_every_stop_signal_ends_in_a_clean_stop(tmp_path, launched, route, name):
    """`python -m pipeline.training.launch --nproc-per-node 2` (torchrun's agent, two gloo ranks, a persistent
    DataLoader worker each): the signal by each route stops both ranks at the same step, each saving its state;
    the launcher exits with 128 + the signal and the one line of rank 0, no traceback, no process left; the re-run
    resumes to the uninterrupted result."""
    command, whole = launched
    signum = getattr(signal, name)
    resume, log = tmp_path / "stopped" / "resume", tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen(command(tmp_path / "stopped"), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)  # fmt: skip
    try:
        _wait_for(proc, (resume / "checkpoint.pt").exists, "a checkpoint")
        _send(route, signum, proc.pid)
        assert proc.wait(timeout=120) == 128 + signum, log.read_text()[-3000:]
    finally:
        proc.kill()
        proc.wait()
    err = log.read_text()
    lines = [line for line in err.splitlines() if ": stopped " in line]
    assert len(lines) == 1 and STOP_LINE.fullmatch(lines[0]) and "Traceback" not in err, err[-3000:]
    assert "exited unexpectedly" not in err and "killed by signal" not in err, err[-3000:]
    saved = torch.load(resume / "checkpoint.pt", weights_only=True)
    assert lines[0].startswith(f"{NAME}: stopped by {name} at epoch {saved['epoch'] + 1} step {saved['step']};")
    ranks = {checkpoint.rank_file(resume, r, saved["epoch"], saved["step"]).name for r in (0, 1)}
    assert {p.name for p in resume.glob("rank-*")} == ranks
    assert _gone(str(resume)) < 5, "a rank or a loader worker outlived its launcher"
    assert not (tmp_path / "stopped" / "out" / "metrics.json").exists()
    done = subprocess.run(command(tmp_path / "stopped"), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0 and "resumed from epoch" in done.stderr, done.stderr[-3000:]
    assert _outputs(tmp_path / "stopped") == whole


@pytest.mark.e2e
def test_sigterm_to_dvc_repro_leaves_no_training_process(tmp_path):
    """`kill -TERM <dvc>` (dvc alone, as a scheduler or a user ends it): the training process notices that its
    dvc ended, saves its state and exits within seconds (no orphan writes outputs later); the next `dvc repro`
    resumes and ends as an uninterrupted run."""
    repo = source_copy(tmp_path / "repo")
    for git in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "t"]):
        subprocess.run(["git", *git], cwd=repo, check=True, capture_output=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    sh(dvc, "repro", "prepare@synthetic", cwd=repo)
    resume, log = repo / ".resume/pretrain/n12-linear-0", tmp_path / "dvc.log"
    env = {**e2e_env(repo), "PYTHONPATH": str(repo)}
    with log.open("w") as out:
        proc = subprocess.Popen([dvc, "repro", "pretrain@n12-linear-0"], cwd=repo, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait_for(proc, (resume / "checkpoint.pt").exists, "a checkpoint")
        os.kill(proc.pid, signal.SIGTERM)  # dvc alone: not its process group
        assert proc.wait(timeout=60) != 0
    finally:
        proc.kill()
        proc.wait()
    assert _gone("pipeline.stages.pretrain", cwd=repo, timeout=30) < 10, "the training process outlived its dvc repro"
    assert not (repo / "results/pretrain/n12-linear-0/metrics.json").exists(), "outputs written behind DVC's back"
    assert f"stopped because dvc (PID {proc.pid}) ended at epoch " in log.read_text(), log.read_text()[-3000:]
    assert 1 <= torch.load(resume / "checkpoint.pt", weights_only=True)["epoch"] < 40
    sh(dvc, "repro", "pretrain@n12-linear-0", cwd=repo)
    results = repo / "results/pretrain/n12-linear-0"
    resumed = {n: (results / n).read_bytes() for n in ("metrics.json", "curves.csv")}
    sh(dvc, "repro", "--force", "pretrain@n12-linear-0", cwd=repo)  # uninterrupted, from scratch
    assert {n: (results / n).read_bytes() for n in resumed} == resumed


def test_a_rank_says_when_its_cpus_cannot_feed_its_loader_and_a_cluster_job_gives_its_window():
    from pipeline.training.runner import cpu_shortage

    assert cpu_shortage(workers=15, ranks=8, cpus=128) == ""
    short = cpu_shortage(workers=15, ranks=8, cpus=1)  # a job step bound to one CPU
    assert short.startswith("this process may run on 1 CPU(s) (its affinity), but 8 rank(s) x (runtime.workers 15 + 1)")
    assert "srun --cpus-per-task" in short
    assert stop_signals.window_s({stop_signals.WINDOW_ENV: "16"}) == 16.0
    assert stop_signals.window_s({}) is None and stop_signals.window_s({stop_signals.WINDOW_ENV: "x"}) is None
