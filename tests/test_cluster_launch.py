"""The launch scripts on a cluster and on a fresh clone, run with fake interpreters and fake SLURM commands that
record their calls: the SLURM launcher's requeue path, the interpreter each script picks, the `.venv` they set
up themselves, and their --help."""
import os
import shutil
import signal
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH = "2.7.1+cu118"
SCRIPTS = ("train.sh", "video2goods_evaluate.sh", "goods2video_evaluate.sh", "scripts/slurm_train.sh")
# the arguments each launch script is given: a config (and the checkpoint for the evaluations)
ARGS = {"train.sh": ["configs/demo.yaml"], "video2goods_evaluate.sh": ["null", "configs/demo.yaml"],
        "goods2video_evaluate.sh": ["null", "configs/demo.yaml"], "scripts/slurm_train.sh": ["configs/demo.yaml"]}


def write_exe(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_python(path, calls, torch=True):
    """A `python` that records each call as "<its path> <args>" and answers the launch scripts' questions:
    whether torch is installed (`torch`), its version, the GPU count (0), a file's hash; `-m venv DIR` creates
    DIR/bin/python, a fake python with torch; anything else (the check, torchrun, pip) succeeds at once."""
    venv_python = "" if torch else f'cp "{path.parent / "torch-python"}" "$3/bin/python"'
    if not torch:
        fake_python(path.parent / "torch-python", calls)
    return write_exe(path, f"""#!/bin/sh
echo "$0 $*" >> "{calls}"
case "$1" in
    -c) case "$2" in
            *find_spec*) exit {0 if torch else 1} ;;
            *metadata*) echo {TORCH} ;;
            *device_count*) echo 0 ;;
            *hashlib*) echo requirements-hash ;;
        esac ;;
    --version) echo "Python 3.11.9" ;;
    -m) if [ "$2" = venv ]; then mkdir -p "$3/bin"; {venv_python or ":"}; fi ;;
esac
exit 0
""")


def checkout(tmp_path, venv=True):
    """A copy of the launch scripts in tmp_path/repo (a fake main_cross_domain_emb.py), with a `.venv` whose
    python has torch when `venv`; returns (repo, calls file)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in SCRIPTS + ("scripts/setup_env.sh", "requirements.txt"):
        shutil.copy(os.path.join(REPO, name), repo / name)
    (repo / "main_cross_domain_emb.py").write_text("")
    calls = tmp_path / "calls.txt"
    if venv:
        fake_python(repo / ".venv" / "bin" / "python", calls)
    return repo, calls


def environ(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHON", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "NPROC_PER_NODE", "MASTER_PORT",
                        "NNODES", "MASTER_ADDR") and not k.startswith("SLURM_")}
    env.update(extra)
    return env


def launch(repo, script, *args, cwd, **env):
    return subprocess.run(["sh", str(repo / script), *ARGS[script], *args], cwd=cwd, env=environ(**env),
                          capture_output=True, text=True, timeout=60)


def read_calls(calls):
    return calls.read_text().splitlines() if calls.exists() else []


# ----------------------------------------------------------------------------- --help


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_the_usage_and_starts_no_python(tmp_path, script, flag):
    repo, calls = checkout(tmp_path)
    python = fake_python(tmp_path / "bin" / "python", calls)
    proc = subprocess.run(["sh", str(repo / script), flag], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=environ(PYTHON=str(python), PATH=f"{python.parent}:{os.environ['PATH']}"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ") and os.path.basename(script) in proc.stdout.splitlines()[0]
    for name in ("NPROC_PER_NODE", "NNODES", "MASTER_ADDR", "MASTER_PORT", "PYTHON"):
        assert f"\n  {name} " in proc.stdout, name
    assert read_calls(calls) == []


# ----------------------------------------------------------------------------- the interpreter


@pytest.mark.parametrize("script", ["train.sh", "video2goods_evaluate.sh"])
@pytest.mark.parametrize("activated", ["VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON"])
def test_an_activated_env_wins_over_the_checkouts_venv_and_python_over_both(tmp_path, script, activated):
    repo, calls = checkout(tmp_path)
    env = {"VIRTUAL_ENV": str(tmp_path / "venv"), "CONDA_PREFIX": str(tmp_path / "conda")}
    for name in env.values():
        fake_python(tmp_path / name / "bin" / "python", calls)
    if activated == "PYTHON":
        env["PYTHON"] = str(fake_python(tmp_path / "mine" / "python", calls))
    else:
        env = {activated: env[activated]}
    chosen = env["PYTHON"] if activated == "PYTHON" else f"{env[activated]}/bin/python"
    proc = launch(repo, script, cwd=tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    assert f"[launch] python {chosen}, torch {TORCH}\n" in proc.stdout
    ran = [line for line in read_calls(calls) if "main_cross_domain_emb.py" in line or "evaluation.py" in line]
    assert len(ran) == 2 and "--check" in ran[0] and "-m torch.distributed.run" in ran[1], ran
    assert all(line.startswith(chosen + " ") for line in read_calls(calls)), read_calls(calls)


def test_an_activated_env_without_torch_stops_the_launch_naming_it(tmp_path):
    repo, calls = checkout(tmp_path)
    fake_python(tmp_path / "cluster" / "bin" / "python", calls, torch=False)
    proc = launch(repo, "train.sh", cwd=tmp_path, CONDA_PREFIX=str(tmp_path / "cluster"), CONDA_DEFAULT_ENV="cluster")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: the activated environment {tmp_path / 'cluster'} has no torch")
    assert not any("main_cross_domain_emb.py" in line for line in read_calls(calls))
    # conda's base env, active at login without being chosen, is passed over for the checkout's .venv
    proc = launch(repo, "train.sh", cwd=tmp_path, CONDA_PREFIX=str(tmp_path / "cluster"), CONDA_DEFAULT_ENV="base")
    assert proc.returncode == 0, proc.stderr
    assert f"[launch] python {repo}/.venv/bin/python, torch {TORCH}" in proc.stdout


# ----------------------------------------------------------------------------- a fresh clone


@pytest.mark.parametrize("script", ["train.sh", "video2goods_evaluate.sh", "goods2video_evaluate.sh"])
def test_a_fresh_clone_sets_up_its_venv_before_the_first_launch(tmp_path, script):
    repo, calls = checkout(tmp_path, venv=False)
    # nothing activated, no .venv, and the python on PATH has no torch
    bin_dir = tmp_path / "bin"
    for name in ("python", "python3"):
        fake_python(bin_dir / name, calls, torch=False)
    proc = launch(repo, script, cwd=tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert proc.returncode == 0, proc.stderr
    assert "[setup] no python with torch" in proc.stderr and f"setting up {repo}/.venv" in proc.stderr
    venv_python = f"{repo}/.venv/bin/python"
    lines = read_calls(calls)
    assert f"{bin_dir}/python3 -m venv {repo}/.venv" in lines
    assert any(line.startswith(f"{venv_python} -m pip install") and line.endswith(f"-r {repo}/requirements.txt")
               for line in lines), lines
    ran = [line for line in lines if "main_cross_domain_emb.py" in line or "evaluation.py" in line]
    assert len(ran) == 2 and all(line.startswith(venv_python + " ") for line in ran), ran
    assert f"[launch] python {venv_python}, torch {TORCH}" in proc.stdout


# ----------------------------------------------------------------------------- SLURM


def slurm_job(tmp_path, job_id="4242", **extra):
    """A fake SLURM job of 2 nodes x 8 GPUs around a copy of scripts/slurm_train.sh: fake srun (waiting for
    SIGTERM when SRUN_WAIT is set), scontrol and scancel (which delivers its signal to srun, as slurmstepd does
    to the step's processes) first on PATH; returns (repo, calls file, env, srun's pid file)."""
    repo, calls = checkout(tmp_path)
    bin_dir = tmp_path / "bin"
    pid_file = tmp_path / "srun.pid"
    write_exe(bin_dir / "srun", f"""#!/bin/sh
echo "srun $*" >> "{calls}"
[ -n "$SRUN_WAIT" ] || exit 0
trap 'echo "srun: got TERM" >> "{calls}"; exit 143' TERM
echo $$ > "{pid_file}"
while :; do sleep 0.1; done
""")
    write_exe(bin_dir / "scontrol", f"""#!/bin/sh
echo "scontrol $*" >> "{calls}"
if [ "$1" = show ] && [ "$2" = hostnames ]; then echo gpu01; echo gpu02; fi
""")
    write_exe(bin_dir / "scancel", f"""#!/bin/sh
echo "scancel $*" >> "{calls}"
kill -TERM "$(cat "{pid_file}")"
""")
    env = environ(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(repo / ".venv" / "bin" / "python"),
                  SLURM_JOB_ID=job_id, SLURM_JOB_NODELIST="gpu[01-02]", SLURM_JOB_NUM_NODES="2",
                  SLURM_GPUS_ON_NODE="8", SLURM_CPUS_PER_TASK="72", SLURM_SUBMIT_DIR=str(repo), **extra)
    return repo, calls, env, pid_file


def run_slurm(repo, env, *args):
    """sbatch's way: the script run from the submit directory, the repository."""
    return subprocess.run(["sh", str(repo / "scripts" / "slurm_train.sh"), "configs/demo.yaml", *args], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=60)


def srun_line(calls):
    return next(line for line in read_calls(calls) if line.startswith("srun "))


@pytest.mark.parametrize("job_id,port", [("4242", 14242), ("123456", 13456)])
def test_a_slurm_job_meets_on_a_port_of_its_own_with_its_cpus(tmp_path, job_id, port):
    repo, calls, env, _ = slurm_job(tmp_path, job_id)
    proc = run_slurm(repo, env, "train.max_steps=5")
    assert proc.returncode == 0, proc.stderr
    srun = srun_line(calls).split()
    assert f"--rdzv_endpoint=gpu01:{port}" in srun and f"--rdzv_id={job_id}" in srun
    assert "--cpus-per-task=72" in srun and "--ntasks=2" in srun and "--nproc_per_node=8" in srun
    assert srun[-1] == "train.max_steps=5"  # a first run starts afresh
    assert not any("requeue" in line for line in read_calls(calls))
    assert f"[launch] python {repo}/.venv/bin/python, torch {TORCH}" in proc.stdout
    # MASTER_PORT, when given, still wins
    env["MASTER_PORT"] = "23456"
    calls.unlink()
    assert run_slurm(repo, env).returncode == 0
    assert "--rdzv_endpoint=gpu01:23456" in srun_line(calls).split()


def test_a_requeued_slurm_job_resumes_from_its_last_checkpoint(tmp_path):
    repo, calls, env, _ = slurm_job(tmp_path, SLURM_RESTART_COUNT="1")
    proc = run_slurm(repo, env, "train.max_steps=5")
    assert proc.returncode == 0, proc.stderr
    check = next(line for line in read_calls(calls) if "--check" in line)
    assert check.endswith("train.max_steps=5 resume=auto")
    assert srun_line(calls).endswith("train.max_steps=5 resume=auto")


def test_usr1_stops_the_training_with_sigterm_then_requeues_the_job(tmp_path):
    repo, calls, env, pid_file = slurm_job(tmp_path, SRUN_WAIT="1")
    launcher = subprocess.Popen(["sh", str(repo / "scripts" / "slurm_train.sh"), "configs/demo.yaml"], cwd=repo,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            time.sleep(0.05)
        # what `--signal=B:USR1@120` sends to the batch shell before the time limit
        launcher.send_signal(signal.SIGUSR1)
        out, err = launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if pid_file.exists() and pid_file.read_text().strip():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    lines = read_calls(calls)
    after = lines[lines.index(srun_line(calls)) + 1:]
    assert after == ["scancel --signal=TERM 4242", "srun: got TERM", "scontrol requeue 4242"], (lines, err)
    assert launcher.returncode == 143  # the training's own exit status
    assert "requeueing job 4242; it resumes with resume=auto" in out
