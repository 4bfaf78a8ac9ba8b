"""The Dask side of ``runtime process`` (``runtime.pipeline`` is the driver): the run's private local cluster and
the client that submits the shard tasks (``runtime.task.process_chunk``) to it or to an existing scheduler.

The local cluster (``--workers N``) is private to the run: it listens on 127.0.0.1 only, over TLS with a
throw-away certificate made for the run (in memory; ``require_encryption``), so no other process, even of the same
user, can connect to it or submit work; and it serves no HTTP at all (distributed otherwise serves identity, logs
and call stacks on 8787 and on every worker, credentials or not) unless ``--dashboard`` asks for the scheduler's
dashboard (127.0.0.1 only, its address printed). Its workers ignore Ctrl-C and close quietly: the driver alone
handles an interruption. An existing cluster (``--scheduler tcp://HOST:8786`` or ``tls://`` with
:class:`TLSFiles`) is only connected to.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from distributed import Scheduler, Worker

from .task import BundleSessions, RunContext, process_chunk

__all__ = ["DistributedRunner", "TLSFiles"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TLSFiles:
    """Files for a TLS connection to a Dask scheduler (``distributed.Security``): CA, client cert and key."""

    ca_file: str
    cert: str
    key: str

    def security(self):
        from distributed import Security

        for what, path in (("--tls-ca-file", self.ca_file), ("--tls-cert", self.cert), ("--tls-key", self.key)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{what} {path} not found")
        return Security(tls_ca_file=self.ca_file, tls_client_cert=self.cert, tls_client_key=self.key,
                        require_encryption=True)


class _NoHTTP:
    """Mixin for a ``dask.distributed`` Scheduler or Worker that serves no HTTP. distributed starts an HTTP
    server on every scheduler (port 8787, even with ``dashboard_address=None``) and on every worker (a random
    port), whose routes publish identity, logs, metrics and call stacks to whoever reaches the port, no
    credentials asked; the run's private cluster needs none of it."""

    def start_http_server(self, routes, dashboard_address, default_port=0, ssl_options=None) -> None:
        from distributed.http.routing import RoutingApplication

        self.http_application = RoutingApplication([])  # what shutdown looks for; nothing listens


class _QuietScheduler(_NoHTTP, Scheduler):
    """The private cluster's scheduler: TLS comms only, no HTTP server."""


class _QuietWorker(_NoHTTP, Worker):
    """The private cluster's workers (started by their nannies in their own processes): no HTTP server, deaf to
    Ctrl-C, and silent while they close.

    A Ctrl-C in a terminal reaches every process of the foreground group, the workers too: each one used to die with
    a KeyboardInterrupt and log its tracebacks, about seventy lines before the driver's one useful line. The driver
    alone handles the interruption (it stops the cluster and says how to resume), so the workers ignore SIGINT, and
    what they log while being stopped (cancelled tasks, a scheduler already gone) is not shown.
    """

    def __init__(self, *args, **kwargs):
        _ignore_interrupts()
        super().__init__(*args, **kwargs)

    async def close(self, *args, **kwargs):
        logging.disable(logging.CRITICAL)  # this process is ending: its shutdown chatter is no news to the user
        return await super().close(*args, **kwargs)


def _ignore_interrupts() -> None:
    """SIGINT ignored in this process, where that is allowed (the main thread of a worker process)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _quiet_logging():
    """No log records from this process while the run's cluster is stopped (the scheduler and nannies live here):
    on an interruption they are warnings about the workers being stopped, which the user just asked for."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _run_security():
    """TLS credentials made for this run only, in memory (``distributed.Security.temporary``: a self-signed
    certificate that is its own CA, ``require_encryption``): the scheduler, workers and nannies accept only
    peers that present it, so no other process can join the cluster or submit work to it."""
    from distributed import Security

    try:
        import cryptography  # noqa: F401  (Security.temporary needs it)
    except ImportError:
        raise ValueError("--workers N needs the cryptography package (pip install cryptography): the run's local "
                         "cluster is private, over TLS with a certificate made for the run") from None
    security = Security.temporary()
    assert security.require_encryption
    return security


def _private_cluster(workers: int, dashboard: bool = False):
    """The run's own cluster of ``workers`` single-threaded worker processes (a ``SpecCluster`` laid out as
    ``LocalCluster`` lays it out: nannies, memory split evenly), private to the run: 127.0.0.1 only, TLS with
    :func:`_run_security`, and no HTTP server anywhere unless ``dashboard`` (then the scheduler's dashboard, on
    127.0.0.1 only)."""
    from distributed import Nanny, SpecCluster
    from distributed.worker_memory import parse_memory_limit

    security = _run_security()
    common = {"host": "127.0.0.1", "protocol": "tls://", "security": security}
    scheduler = {"cls": Scheduler if dashboard else _QuietScheduler,
                 "options": {**common, "port": 0, "dashboard": dashboard,
                             "dashboard_address": "127.0.0.1:8787" if dashboard else None}}
    worker = {"cls": Nanny, "options": {**common, "nthreads": 1, "worker_class": _QuietWorker, "dashboard": False,
                                        "dashboard_address": None, "silence_logs": logging.WARNING,
                                        "memory_limit": parse_memory_limit("auto", 1, workers, logger=_LOG)}}
    return SpecCluster(workers=dict.fromkeys(range(workers), worker), scheduler=scheduler, worker=worker,
                       security=security, silence_logs=logging.WARNING)


class DistributedRunner:
    """A Dask client (the run's private cluster, or an existing scheduler), connected when made: a wrong address
    fails here, before the catalogue exists."""

    def __init__(self, workers: int, scheduler: str | None, ctx: RunContext, tls: TLSFiles | None = None,
                 dashboard: bool = False):
        from dask.distributed import Client

        self.cluster = None
        self.client: Client | None = None  # connected below; None again once closed
        self.ctx = ctx
        self.dashboard = ""
        if scheduler:
            security = tls.security() if tls else None
            try:
                self.client = Client(scheduler, timeout="10s", security=security)
            except (OSError, TimeoutError) as exc:
                raise ValueError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
            self.where = f"scheduler {scheduler}"
            return
        self.cluster = _private_cluster(workers, dashboard)
        try:
            self.client = Client(self.cluster)
        except BaseException:
            self.cluster.close()
            raise
        self.where = f"LocalCluster of {workers} worker processes"
        if dashboard:
            self.dashboard = self.cluster.dashboard_link
            print(f"runtime process: dashboard at {self.dashboard} (127.0.0.1 only; any local user can open it "
                  "while the run lasts)", file=sys.stderr)

    def prepare(self) -> None:
        """Build and try the run's sessions on every worker now (:class:`BundleSessions`): a bundle that fails
        there fails before the catalogue exists, with the workers' one-line error."""
        options = self.ctx.options
        assert self.client is not None, "the runner is closed"
        self.client.register_plugin(BundleSessions(self.ctx.bundle_path, options, self.ctx.bundle_sha256))

    def run(self, todo: list[int], finished) -> str:
        from dask.distributed import as_completed

        assert self.client is not None, "the runner is closed"
        futures = [self.client.submit(process_chunk, k, self.ctx, pure=False) for k in todo]
        for future in as_completed(futures):
            finished(future.result())
            future.release()
        return self.where

    def close(self) -> None:
        """Disconnect and stop the run's own cluster (idempotent: the driver calls it on every way out), without
        the log records distributed writes while a cluster with running tasks is stopped (an interrupted run)."""
        client, cluster, self.client, self.cluster = getattr(self, "client", None), self.cluster, None, None
        with _quiet_logging():
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
