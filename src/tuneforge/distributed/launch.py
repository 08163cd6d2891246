"""Several processes for one run: `tuneforge train` with `nproc_per_node` > 1 starts itself again through
torch.distributed.run (torchrun) and waits; a command already under torchrun or `accelerate launch` runs as one rank.

    tuneforge train cfg.yaml nproc_per_node=2
      -> python -m torch.distributed.run --nproc_per_node=2 --nnodes=1 --node_rank=0 --master_addr=... --master_port=...
             -m tuneforge.cli train cfg.yaml nproc_per_node=2        (an argument list, no shell)
      -> each rank: logs tagged with its rank, the run path (only rank 0 writes artifacts and events.jsonl), and on
         failure a small report in the launcher's folder
      -> the launcher: torchrun stops every rank once one exits non-zero; it prints the failing ranks' errors and
         closes events.jsonl with `failed` when rank 0 was stopped before it could; on SIGTERM to the group (the
         Board's stop) it waits while torchrun passes the signal once to every rank, which stop at one step
         (train/stop.py), and exits 143.

The process group timeout is the Trainer's `ddp_timeout` (transformers' default, 1800 s, kept): a rank that waits
that long in a collective raises. The stall watchdog (`watchdog_timeout_s`, 900 s) fires before it and says why.
"""

import glob
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)

REPORT_DIR_ENV = "TUNEFORGE_LAUNCH_REPORTS"  # the launcher's folder where a failing rank writes rank<N>.json
MULTI_NODE_PORT = 29500  # torchrun's own default; every node must agree on it, so no free-port search across nodes
LOG_FORMAT = "[%(levelname)s|rank{rank}|%(name)s] %(message)s"


def under_launcher(env=None) -> bool:
    """Whether torchrun / accelerate launch / torch.distributed.run started this process (it sets these variables)."""
    env = os.environ if env is None else env
    return "LOCAL_RANK" in env or ("RANK" in env and "WORLD_SIZE" in env)


def planned_world_size(cfg, env=None) -> int:
    """How many processes this run has: the launcher's WORLD_SIZE, else nproc_per_node x nnodes from the config."""
    env = os.environ if env is None else env
    if under_launcher(env):
        try:
            return max(int(env.get("WORLD_SIZE", 1)), 1)
        except ValueError:
            return 1
    return cfg.method.nproc_per_node * cfg.method.nnodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(cfg, args: list[str], port: int) -> list[str]:
    """The torch.distributed.run command that runs `tuneforge train args` once per process."""
    m = cfg.method
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={m.nproc_per_node}", f"--nnodes={m.nnodes}",
            f"--node_rank={m.node_rank}", f"--master_addr={m.master_addr}", f"--master_port={port}",
            "-m", "tuneforge.cli", "train", *args]


def from_cli(args: list[str], cfg) -> int | None:
    """`tuneforge train`'s one call: with several processes, launch them (or run as one of them) and return the exit
    code; None for an ordinary single-process run, which the caller runs itself."""
    deepspeed_environment(cfg)
    world = planned_world_size(cfg)
    if world <= 1:
        return None
    from tuneforge.distributed.checks import refuse

    refuse(cfg, world)  # before any process loads anything
    if not under_launcher():
        return launch(args, cfg)
    return run_as_rank(cfg)


def deepspeed_environment(cfg, env=None) -> None:
    """With `deepspeed`: its CPU accelerator when there is no GPU, and its compiled ops (cpu_adam, shared-memory
    comm; ~150 s to build the first time) kept in tuneforge's cache instead of ~/.cache/torch_extensions.
    Values already set win."""
    from tuneforge.data.cache import cache_root
    from tuneforge.distributed.checks import cuda_available, strategy

    env = os.environ if env is None else env
    if strategy(cfg) != "deepspeed":
        return
    if not cuda_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(cache_root(cfg.model.cache_dir), "torch_extensions"))


def tag_logs_with_rank(rank: int) -> None:
    """Every log line of this process carries its rank (`[INFO|rank1|tuneforge.run] ...`)."""
    fmt = logging.Formatter(LOG_FORMAT.format(rank=rank))
    for handler in logging.getLogger().handlers:
        handler.setFormatter(fmt)


def run_as_rank(cfg) -> int:
    """This process is one rank of a launched job: train, and leave a failure report for the launcher."""
    from tuneforge import run
    from tuneforge.distributed import is_main_process, rank

    tag_logs_with_rank(rank())
    try:
        metrics = run.train(cfg)
    except BaseException as e:
        if getattr(e, "stopped_fields", None) is None:  # a stop asked for (train/stop.py) is not a failure
            write_report(rank(), e)
        raise
    from tuneforge.train.procstats import peak_rss_gib

    log.info("peak RSS of this rank: %.3f GiB", peak_rss_gib())  # all_results.json has rank 0's
    leave_together()
    if is_main_process():
        print(f"done: train_loss={metrics.get('train_loss', float('nan')):.4f} "
              f"train_tokens_per_second={metrics.get('train_tokens_per_second')} output_dir={cfg.output.output_dir}")
    return 0


def leave_together() -> None:
    """Wait until every rank is done (rank 0 writes the artifacts last), then close the process group: a rank that
    exits first would make torchrun stop rank 0 mid-save, and DeepSpeed's communication threads abort the
    interpreter at exit while the group is still open."""
    try:
        import torch.distributed as td
    except ImportError:
        return
    if td.is_available() and td.is_initialized():
        td.barrier()
        td.destroy_process_group()


def write_report(rank: int, error: BaseException | str, kind: str | None = None) -> None:
    """Tell the launcher (when there is one of ours) why this rank ends; written whole or not at all."""
    folder = os.environ.get(REPORT_DIR_ENV)
    if not folder or not os.path.isdir(folder):
        return
    message = error if isinstance(error, str) else (str(error) or type(error).__name__)
    record = {"rank": rank, "time": time.time(), "type": kind or type(error).__name__, "error": message,
              "user_error": kind is None and isinstance(error, TuneforgeError)}
    tmp = os.path.join(folder, f".rank{rank}.json.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        os.replace(tmp, os.path.join(folder, f"rank{rank}.json"))
    except OSError:
        pass  # the launcher still reports the exit code


def read_reports(folder: str) -> list[dict]:
    """The failing ranks' reports, earliest first."""
    out = []
    for path in glob.glob(os.path.join(folder, "rank*.json")):
        try:
            with open(path, encoding="utf-8") as fh:
                out.append(json.load(fh))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda r: r.get("time", 0.0))


def launch(args: list[str], cfg) -> int:
    """Run torch.distributed.run with this command's arguments and wait; its exit code (2 when a rank failed on a
    user error). torchrun stops every other rank as soon as one exits non-zero."""
    m = cfg.method
    port = m.master_port or (free_port() if m.nnodes == 1 else MULTI_NODE_PORT)
    cmd = command(cfg, args, port)
    log.info("launching %d processes on this node (%d node(s), node_rank %d, rendezvous %s:%d) through torch.distributed.run",
             m.nproc_per_node, m.nnodes, m.node_rank, m.master_addr, port)
    with tempfile.TemporaryDirectory(prefix="tuneforge-launch-") as reports:
        env = {**os.environ, REPORT_DIR_ENV: reports}
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // m.nproc_per_node)))
        sys.stdout.flush()
        sys.stderr.flush()
        proc = subprocess.Popen(cmd, env=env)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _stop_passed_on) if main else None
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # the terminal sent SIGINT to every process of the group; wait for them to stop
            code = proc.wait()
            raise
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
        if code == 0:
            return 0
        failures = read_reports(reports)
    stopped = stop_message(cfg.output.output_dir) if not failures else None
    if stopped:  # every rank stopped at the same step on request (SIGTERM, the Board's stop button)
        print(stopped, file=sys.stderr)
        from tuneforge.train.stop import EXIT_CODE

        return EXIT_CODE
    message = failure_message(failures, code, m.nproc_per_node * m.nnodes)
    close_event_log(cfg.output.output_dir, message, root_cause_elsewhere=bool(failures) and failures[0]["rank"] != 0)
    print(f"error: {message}", file=sys.stderr)
    return 2 if failures and failures[0].get("user_error") else 1


def _stop_passed_on(signum, frame) -> None:
    """SIGTERM to the run's process group (the Board's stop, `kill -TERM -PGID`) reaches this launcher and
    torch.distributed.run, which sends it once to every rank (each in its own session) and waits for them: the ranks
    save a checkpoint at the same step and stop. The launcher waits for that instead of ending at once."""
    log.warning("stop asked for (signal %d): every rank saves a checkpoint at the end of its step and stops", signum)


def stop_message(output_dir: str) -> str | None:
    """The `stopped` event's message when the run ended on a stop request, else None."""
    from tuneforge.run.events import read_events, state

    if not output_dir or not os.path.isfile(os.path.join(output_dir, "events.jsonl")):
        return None
    events = read_events(output_dir)
    now = state(events)
    if now["state"] != "stopped":
        return None
    return next((e.get("message") for e in reversed(events) if e["event"] == "stopped"), None) or "stopped"


def failure_message(failures: list[dict], code: int, world: int) -> str:
    if not failures:
        return (f"the {world}-process run failed (torch.distributed.run exit code {code}) before any rank reported why; "
                f"see the ranks' output above (a rank killed by the system, e.g. out of memory, leaves no message)")
    first = failures[0]
    lines = [f"rank {first['rank']} failed: {first['error']}"]
    for other in failures[1:]:
        lines.append(f"rank {other['rank']} also reported: {other['error']}")
    lines.append(f"(the other ranks of the {world}-process run were stopped)")
    return "\n".join(lines)


def close_event_log(output_dir: str, message: str, root_cause_elsewhere: bool = False) -> None:
    """End events.jsonl with `failed` naming the failing rank: when rank 0 was stopped before it could write its end,
    or when its own `failed` names only the consequence (a peer closed the connection) of another rank's error."""
    from tuneforge.run.events import EventLog, read_events, state

    if not output_dir or not os.path.isfile(os.path.join(output_dir, "events.jsonl")):
        return
    now = state(read_events(output_dir))
    if now["state"] in ("finished", "stopped") or (now["state"] == "failed" and not root_cause_elsewhere) or "run" not in now:
        return
    events = EventLog(output_dir, enabled=True)
    events.run_id = now["run"]
    events.emit("failed", error=message, key=None, problems=[], type="DistributedFailure")
