#!/usr/bin/env python3
"""Run any training or evaluation script as a submitit job, on SLURM or on this machine.

    python tools/run_with_submitit.py [--executor slurm|local] --nodes N --tasks-per-node G \\
        --timeout MINUTES --job-dir DIR [--partition P --account A ...] -- moco/main_moco.py FLAGS

Everything after `--` is the script and its own flags, unchanged. The job has
one task per GPU (G tasks on each of N nodes; on a CPU machine, G processes).
Each task starts the script as a child process with RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT taken from the job
(submitit's JobEnvironment), so the script joins its process group as it does
under torchrun (env://); the MoCo-family scripts then ignore
--multiprocessing-distributed, --world-size, --rank and --dist-url.

Pre-emption: before the time limit (--signal-delay seconds) the scheduler
sends submitit's warning signal (SIGUSR2) to every task. The task passes it
on to its script as SIGUSR1, which makes every rank save a checkpoint at the
next iteration boundary and exit 0 (docs/resume.md). Rank 0's task then
hands submitit the same command line (checkpoint()) and requeues the job; the
requeued job reruns that command, which resumes from the run folder as any
rerun does. A SIGTERM (a scheduler's pre-emption) is passed on as it is.
The script itself ignores SIGUSR2, which SLURM may deliver to every process
of the job. See docs/cluster.md.

submitit is an optional dependency: `pip install -e '.[cluster]'`.
"""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from selfsup.core.checks import FlagParser
from selfsup.core.errors import UserError, cli_main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A script stopped by a stop signal exits 0 after saving; one killed by
# SIGUSR1/SIGTERM before it could install its handlers has lost no
# checkpoint either: both are pre-empted runs to requeue, not failures.
STOPPED = (0, -signal.SIGUSR1, -signal.SIGTERM)


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise UserError("expected `-- SCRIPT.py FLAGS` after the job's flags, e.g. -- moco/main_moco.py ...")
    cut = argv.index("--")
    own, command = argv[:cut], argv[cut + 1 :]
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--executor", default="slurm", choices=["slurm", "local"])
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--tasks-per-node", type=int, default=1, help="GPUs per node (processes on a CPU machine)")
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: --tasks-per-node (local: 0 without GPUs)")
    p.add_argument("--timeout", type=float, default=2880, help="time limit of one run of the job, minutes")
    p.add_argument("--job-dir", default="submitit-jobs/%j", help="submitit's folder (shared by all nodes); %%j: job id")
    p.add_argument("--signal-delay", type=int, default=120, help="warning signal this many seconds before the limit")
    p.add_argument("--max-timeouts", type=int, default=30, help="requeues after time limits (pre-emptions: unlimited)")
    p.add_argument("--master-port", type=int, default=None, help="default: from the job id (local: a free port)")
    p.add_argument("--name", default=None, help="job name (default: the script's)")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--comment")
    p.add_argument("--mem-gb", type=int)
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE", help="any other sbatch option")
    p.add_argument("--wait", action="store_true", help="slurm: follow rank 0's log until the job ends (local always)")
    args = p.parse_args(own)
    check_args(args)
    return args, resolve_command(command)


def check_args(args):
    for flag, value in [("--nodes", args.nodes), ("--tasks-per-node", args.tasks_per_node)]:
        if value < 1:
            raise UserError(f"{flag} {value}: expected at least 1")
    if not args.timeout > 0 or args.timeout == float("inf"):
        raise UserError(f"--timeout {args.timeout:g}: expected a positive number of minutes")
    if args.signal_delay < 0 or args.signal_delay >= args.timeout * 60:
        raise UserError(f"--signal-delay {args.signal_delay}: expected 0 <= seconds < --timeout ({args.timeout:g} min)")
    counts = [
        ("--max-timeouts", args.max_timeouts, 0),
        ("--mem-gb", args.mem_gb, 1),
        ("--cpus-per-task", args.cpus_per_task, 1),
    ]
    for flag, value, low in counts:
        if value is not None and value < low:
            raise UserError(f"{flag} {value}: expected {low} or more")
    if args.gpus_per_node is not None and args.gpus_per_node < 0:
        raise UserError(f"--gpus-per-node {args.gpus_per_node}: expected 0 or more")
    if args.master_port is not None and not 0 < args.master_port < 65536:
        raise UserError(f"--master-port {args.master_port}: expected a port in 1..65535")
    if args.executor == "local" and args.nodes != 1:
        raise UserError(
            f"--nodes {args.nodes} with --executor local: a local job runs on this machine only (--nodes 1)"
        )
    for item in args.slurm_param:
        if "=" not in item or not item.split("=", 1)[0]:
            raise UserError(f"--slurm-param {item!r}: expected KEY=VALUE, e.g. exclusive=true")
    folder = args.job_dir.split("%j")[0].rstrip("/") or "."
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"--job-dir {args.job_dir!r}: '{folder}' is a file, expected a folder")


def resolve_command(command):
    """The script after `--` as an absolute path (looked up from here, then
    from the repository root), with its flags unchanged."""
    if not command:
        raise UserError("nothing after `--`: expected a script and its flags, e.g. -- moco/main_moco.py ...")
    script = command[0]
    if not script.endswith(".py"):
        raise UserError(f"after `--`: {script!r} is not a script; expected a .py file such as moco/main_moco.py")
    for base in (os.getcwd(), REPO_ROOT):
        path = os.path.join(base, script)
        if os.path.isfile(path):
            return [os.path.abspath(path), *command[1:]]
    raise UserError(f"after `--`: script {script!r} not found (here or in {REPO_ROOT})")


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError(
            "tools/run_with_submitit.py needs submitit, which is not installed: pip install -e '.[cluster]' "
            "(the 'cluster' extra), or pip install 'submitit>=1.5'"
        ) from None
    return submitit


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def visible_gpus():
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def make_executor(submitit, args, name):
    """submitit's executor with the job's resources; SLURM options by their sbatch names."""
    gpus = args.gpus_per_node
    if args.executor == "local":
        if gpus is None:
            gpus = args.tasks_per_node if visible_gpus() >= args.tasks_per_node else 0
        executor = submitit.LocalExecutor(folder=args.job_dir, max_num_timeout=args.max_timeouts)
        executor.update_parameters(
            timeout_min=args.timeout,
            tasks_per_node=args.tasks_per_node,
            gpus_per_node=gpus,
            signal_delay_s=args.signal_delay,
        )
        return executor
    try:
        executor = submitit.SlurmExecutor(folder=args.job_dir, max_num_timeout=args.max_timeouts)
    except RuntimeError:  # submitit looks for srun
        raise UserError(
            "--executor slurm: no 'srun' on PATH (not on a SLURM login node?); --executor local runs the job here"
        ) from None
    options = {
        "job_name": name,
        "nodes": args.nodes,
        "ntasks_per_node": args.tasks_per_node,
        "gpus_per_node": args.tasks_per_node if gpus is None else gpus,
        "time": max(1, round(args.timeout)),
        "signal_delay_s": args.signal_delay,
    }
    for key in ("partition", "account", "qos", "constraint", "comment", "cpus_per_task"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.mem_gb is not None:
        options["mem"] = f"{args.mem_gb}GB"
    if args.slurm_param:
        options["additional_parameters"] = dict(item.split("=", 1) for item in args.slurm_param)
    try:
        executor.update_parameters(**options)
    except ValueError as exc:
        raise UserError(f"--executor slurm: {str(exc).splitlines()[0]}") from None
    return executor


# -- inside the job: one task -----------------------------------------------------------


def torch_placement(env, master_port):
    """The variables torchrun would set, from submitit's JobEnvironment: the
    task's global rank, its rank on the node, the node's task count, and
    the first node of the job as the rendezvous host."""
    per_node = env.num_tasks // max(env.num_nodes, 1)
    if env.cluster == "local":
        host = "127.0.0.1"
    else:
        host = env.hostnames[0]
    if master_port is None:  # every task of a SLURM job derives the same port from the job id
        digits = "".join(c for c in env.job_id if c.isdigit()) or "0"
        master_port = 20000 + int(digits) % 20000
    return {
        "RANK": str(env.global_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(per_node),
        "GROUP_RANK": str(env.node),
        "MASTER_ADDR": host,
        "MASTER_PORT": str(master_port),
    }


def warning_signal(submitit):
    """The signal submitit's tasks take as 'checkpoint and requeue' (SIGUSR2 unless $SUBMITIT_PREEMPT_SIGNAL)."""
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


def _signal(child, signum):
    if child is not None and child.poll() is None:
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass


class ScriptJob:
    """The submitted callable: runs `command` (script + flags) in `cwd` as one
    rank of the job; checkpoint() is submitit's requeue hook."""

    def __init__(self, command, cwd, master_port=None):
        self.command, self.cwd, self.master_port = list(command), cwd, master_port

    def __call__(self):
        import submitit

        env = submitit.JobEnvironment()
        child_env = dict(os.environ, PYTHONUNBUFFERED="1", **torch_placement(env, self.master_port))
        warn = warning_signal(submitit)
        submitit_handler = signal.getsignal(warn)
        stopped = {}
        child = self._start(child_env, warn, stopped)
        try:
            code = child.wait()
        finally:
            signal.signal(warn, submitit_handler)
        script = os.path.relpath(self.command[0], self.cwd)
        if stopped and code in STOPPED:
            if "warning" in stopped and callable(submitit_handler):
                # Now that the script has saved: submitit's own handler; on rank 0
                # it calls checkpoint() and requeues the job (and exits).
                submitit_handler(warn, None)
            return f"rank {env.global_rank}: {script} saved and stopped on {'/'.join(stopped)}"
        if code != 0:
            raise RuntimeError(f"rank {env.global_rank}: {script} exited with status {code}")
        return f"rank {env.global_rank}: {script} finished"

    def _start(self, env, warn, stopped):
        """Start the script with the warning signal ignored (SLURM may send it
        to every process of the job; the script's stop signals are SIGUSR1 and
        SIGTERM), then install the handlers that pass stops on to it. The
        warning signal is blocked meanwhile, so none arriving then is lost."""
        box = {}

        def on_warning(signum, frame):
            stopped["warning"] = True
            _signal(box.get("child"), signal.SIGUSR1)

        def on_term(signum, frame):
            stopped["SIGTERM"] = True
            _signal(box.get("child"), signal.SIGTERM)

        ignore = warn not in (signal.SIGUSR1, signal.SIGTERM)
        if ignore:
            signal.pthread_sigmask(signal.SIG_BLOCK, {warn})
        try:
            if ignore:
                signal.signal(warn, signal.SIG_IGN)
            box["child"] = subprocess.Popen([sys.executable, *self.command], cwd=self.cwd, env=env)
            signal.signal(warn, on_warning)
            signal.signal(signal.SIGTERM, on_term)
        finally:
            if ignore:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {warn})
        return box["child"]

    def checkpoint(self):
        """What the requeued job runs: the same command line, which resumes
        from the checkpoint the script has just written."""
        import submitit

        return submitit.helpers.DelayedSubmission(type(self)(self.command, self.cwd, self.master_port))


# -- the submitting side ----------------------------------------------------------------


def task_logs(job, ntasks, kind):
    from submitit.core.utils import JobPaths

    return [getattr(JobPaths(job.paths.folder, job.job_id, k), kind) for k in range(ntasks)]


def follow(job, poll_s=0.5):
    """Print rank 0's output as it comes, until the job ends."""
    path, offset = job.paths.stdout, 0
    while True:
        done = job.done()
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                f.seek(offset)
                text = f.read()
                offset = f.tell()
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()
        if done:
            return
        time.sleep(poll_s)


def outcome(job, ntasks):
    """0 when every task finished; else the script's own one line (status 2)
    or the job's failure (status 1)."""
    try:
        results = job.results()
    except Exception as exc:  # submitit's FailedJobError / UncompletedJobError: the details are in the logs
        for log in task_logs(job, ntasks, "stderr"):
            if os.path.exists(log):
                with open(log, errors="replace") as f:
                    lines = [line.rstrip("\n") for line in f if line.startswith("error: ")]
                if lines:
                    print(lines[-1], file=sys.stderr)
                    return 2
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        print(f"error: job {job.job_id} failed: {reason}; logs in {job.paths.folder}", file=sys.stderr)
        return 1
    for line in results:
        print(f"=> {line}")
    return 0


@cli_main
def main(argv=None):
    args, command = parse_args(argv)
    submitit = import_submitit()
    name = args.name or os.path.splitext(os.path.basename(command[0]))[0]
    executor = make_executor(submitit, args, name)
    port = args.master_port
    if args.executor == "local" and port is None:
        port = free_port()  # chosen once: the requeued job's tasks meet on it again
    job = executor.submit(ScriptJob(command, os.getcwd(), port))
    ntasks = args.nodes * args.tasks_per_node
    print(f"=> submitted job {job.job_id} ({args.executor}, {args.nodes} x {args.tasks_per_node} tasks): "
          f"python {shlex.join([os.path.relpath(command[0]), *command[1:]])}", flush=True)  # fmt: skip
    print(f"=> rank 0's log: {job.paths.stdout}", flush=True)
    if args.executor == "slurm" and not args.wait:
        return 0
    follow(job)
    status = outcome(job, ntasks)
    if status:
        sys.exit(status)
    return 0


if __name__ == "__main__":
    main()
