"""A few CPU processes in one gloo process group on 127.0.0.1, kept for a whole test session, that run
the functions a test sends them, each rank its own call, with a deadline.

Starting processes that import torch costs seconds on a small machine; the session's distributed
tests share one set (`RankPool`, conftest's `gloo_ranks`) instead of starting their own. A function sent to the ranks must
be importable by name (a module-level function of a test module) and is called as
fn(rank, world_size, *args); what each rank returns (picklable) comes back as a list by rank. A
failure on any rank, or the deadline passing, fails the test with every rank's traceback, and the
processes are replaced, since their group may be left mid-collective.
"""
import datetime
import importlib
import multiprocessing
import os
import pickle
import queue
import socket
import time
import traceback

import torch
from torch.utils._pytree import tree_map_only

COLLECTIVE_TIMEOUT_S = 60  # gloo's own limit on a collective that a failed peer never joins


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(rank, world_size, port, tasks, results):
    import torch.distributed as dist

    torch.set_num_threads(1)  # the ranks share the machine's cores
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    results.put((rank, "ready", None))
    try:
        while True:
            task = tasks.get()
            if task is None:
                return
            module, name, args = task
            try:
                fn = getattr(importlib.import_module(module), name)
                value = tree_map_only(torch.Tensor, lambda t: t.detach().clone(), fn(rank, world_size, *args))
                # Pickled here, so that a result that cannot be fails this call (the queue would
                # drop it in its feeder thread), and as bytes rather than tensors in shared memory.
                results.put((rank, "ok", pickle.dumps(value)))
            except BaseException:  # noqa: B036  (the test process reports it, whatever it was)
                results.put((rank, "error", traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class RankPool:
    """world_size ranks, started at the first run() and again after a failure."""

    def __init__(self, world_size, start_timeout_s=120):
        self.world_size = world_size
        self._start_timeout_s = start_timeout_s
        self._procs = []

    def _start(self):
        ctx = multiprocessing.get_context("spawn")
        self._results = ctx.Queue()
        self._tasks = [ctx.SimpleQueue() for _ in range(self.world_size)]
        port = _free_port()
        self._procs = [ctx.Process(target=_serve, args=(r, self.world_size, port, self._tasks[r], self._results),
                                   daemon=True) for r in range(self.world_size)]
        for p in self._procs:
            p.start()
        self._collect("ready", self._start_timeout_s, "starting")

    def run(self, fn, *args, timeout_s=90):
        """fn(rank, world_size, *args) on every rank; the list of their results, by rank."""
        if not self.alive:
            self.close()
            self._start()
        for q in self._tasks:
            q.put((fn.__module__, fn.__name__, args))
        return self._collect("ok", timeout_s, fn.__name__)

    def _collect(self, expected, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        values, errors = {}, {}
        while len(values) + len(errors) < self.world_size:
            left = deadline - time.monotonic()
            dead = [r for r, p in enumerate(self._procs) if not p.is_alive()]
            if left <= 0 or dead:
                self.close()
                reason = "ranks %s exited" % dead if dead else "no answer in time"
                raise AssertionError("%s on %d ranks: %s; answered: %s%s" % (
                    what, self.world_size, reason, sorted(values), _format(errors)))
            try:
                rank, status, value = self._results.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if status == expected:
                values[rank] = pickle.loads(value) if status == "ok" else value
            else:
                errors[rank] = value
                # The others may wait in a collective the failed rank never joins: a few seconds
                # for their own errors, not gloo's whole timeout.
                deadline = min(deadline, time.monotonic() + 5)
        if errors:
            self.close()
            raise AssertionError("%s failed on ranks %s%s" % (what, sorted(errors), _format(errors)))
        return [values[r] for r in range(self.world_size)]

    @property
    def alive(self):
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def close(self):
        procs, self._procs = self._procs, []
        for p, q in zip(procs, getattr(self, "_tasks", [])):
            if p.is_alive():
                try:
                    q.put(None)
                except (OSError, ValueError):
                    pass
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


def _format(errors):
    return "".join("\n--- rank %d ---\n%s" % (r, tb) for r, tb in sorted(errors.items()))
