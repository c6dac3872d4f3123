"""The bank demo: a local goverse cluster moving money between accounts.

``python -m examples.bank.run`` starts one etcd and a few node processes on
loopback, joins them as an in-process client node, opens accounts, runs
concurrent random transfers and checks that no money appeared or vanished
(after settling any transfer left in doubt, see accounts.py).
It prints a summary and exits 0 only when the total balance is conserved
and no transfer failed unexpectedly. Everything it started is stopped on
the way out, also after Ctrl-C or an error.
"""

# Patch first: gevent must replace socket and threading before grpc, etcd
# clients or anything else that holds on to them is imported.
from goverse import runtime

runtime.patch()

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Group  # noqa: E402

import goverse  # noqa: E402
from goverse.etcd_server import EtcdServer  # noqa: E402
from goverse.testing import NodeProcess, wait_until  # noqa: E402

from . import accounts  # noqa: E402  (registers Account in this process too)
from . import bank_pb2 as bank  # noqa: E402

log = logging.getLogger("examples.bank")

#: Seconds membership must hold still before shards are assigned; short,
#: because this cluster starts all its nodes at once.
STABILITY_WINDOW = 0.5

#: Seconds a node process may take to leave after SIGTERM.
NODE_SHUTDOWN_GRACE = 5.0

#: Seconds the in-process client node may take to stop.
CLIENT_STOP_TIMEOUT = 15.0

#: Seconds to wait for the cluster to agree on a settled shard map.
SETTLE_TIMEOUT = 60.0

#: Unexpected failures logged in full; later ones are only counted.
LOGGED_FAILURES = 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.bank.run",
        description="Run random transfers between bank accounts on a local "
                    "goverse cluster and check that money is conserved.")
    parser.add_argument("--nodes", type=_positive, default=3,
                        help="node processes to start (default: %(default)s)")
    parser.add_argument("--accounts", type=_at_least_two, default=1000,
                        help="accounts to open (default: %(default)s)")
    parser.add_argument("--transfers", type=_positive, default=20000,
                        help="transfers to run (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="run transfers for this long (overrides --transfers)")
    parser.add_argument("--concurrency", type=_positive, default=64,
                        help="greenlets sending transfers (default: %(default)s)")
    parser.add_argument("--initial-balance", type=_positive, default=1000,
                        help="balance each account opens with (default: %(default)s)")
    parser.add_argument("--max-amount", type=_positive, default=100,
                        help="largest amount of one transfer (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random transfers (default: random)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the node logs even when the run succeeds")
    parser.add_argument("--verbose", action="store_true",
                        help="log this process's goverse activity on stderr")
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive, got %s" % args.duration)
    return args


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number, got %r" % (text,)) from None


def _positive(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, got %d" % value)
    return value


def _at_least_two(text: str) -> int:
    value = _whole_number(text)
    if value < 2:
        raise argparse.ArgumentTypeError("a transfer needs two accounts, got %d" % value)
    return value


# -- the cluster --------------------------------------------------------------


class LocalCluster:
    """One etcd, node processes and an in-process client node, all on loopback."""

    def __init__(self, num_nodes: int, log_dir: str) -> None:
        self.num_nodes = num_nodes
        self.log_dir = log_dir
        self.prefix = "/goverse-bank/%s" % uuid.uuid4().hex[:12]
        self.etcd: EtcdServer | None = None
        self.processes: list[NodeProcess] = []
        self.client: goverse.Node | None = None

    def __repr__(self) -> str:
        return "<LocalCluster %s nodes=%d>" % (self.prefix, len(self.processes))

    def start(self) -> None:
        self.etcd = EtcdServer(name="goverse-bank-etcd",
                               log_path=os.path.join(self.log_dir, "etcd.log")).start()

        # Launch every process before waiting for any: they start in parallel.
        for index in range(self.num_nodes):
            self.processes.append(self._node_process(index).start(wait=False))
        for proc in self.processes:
            proc.wait_serving()

        settings = goverse.Settings.from_mapping({
            "etcd_endpoints": [self.etcd.endpoint], "etcd_prefix": self.prefix,
            "listen": "127.0.0.1:0", "stability_window": STABILITY_WINDOW})
        # The client only calls accounts: as a gate-role node it owns no
        # shards, so its joining and leaving move no account.
        self.client = goverse.Node(settings, role="gate").start()

    def _node_process(self, index: int) -> NodeProcess:
        return NodeProcess(
            self.etcd.endpoint, prefix=self.prefix, objects=["examples.bank.accounts"],
            extra_args=["--stability-window", str(STABILITY_WINDOW),
                        "--shutdown-grace", str(NODE_SHUTDOWN_GRACE)],
            log_path=os.path.join(self.log_dir, "node-%d.log" % index))

    def wait_settled(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until every node is a member and no shard is moving."""
        cluster = self.client.cluster
        members = self.num_nodes
        wait_until(lambda: len(cluster.state.nodes) == members and cluster.is_settled(),
                   timeout, interval=0.1,
                   message="%d members and a settled shard map" % members)

    def objects_per_node(self) -> list[tuple[str, int | str]]:
        counts: list[tuple[str, int | str]] = []
        for proc in self.processes:
            try:
                counts.append((proc.address, proc.status().num_objects))
            except Exception as exc:  # a dead node still gets a line in the summary
                counts.append((proc.address, "unavailable (%s)" % type(exc).__name__))
        return counts

    def stop(self) -> None:
        """Stop everything that started; safe to call at any point, twice too."""
        # SIGTERM all node processes first so they leave in parallel.
        for proc in self.processes:
            proc.signal(signal.SIGTERM)
        for proc in self.processes:
            status = proc.wait(NODE_SHUTDOWN_GRACE + 10)
            if status not in (0, None):
                log.warning("%r exited with status %s (log: %s)", proc, status, proc.log_path)
            proc.close()
        if self.client is not None:
            self._stop_client()
        if self.etcd is not None:
            self.etcd.stop()

    def _stop_client(self) -> None:
        # Bounded: after a Ctrl-C in a terminal, etcd and the node processes
        # got the signal too, and closing channels to dead peers can hang.
        try:
            with gevent.Timeout(CLIENT_STOP_TIMEOUT):
                self.client.stop(grace=2)
        except gevent.Timeout:
            log.warning("client node %s did not stop within %.0fs; going on",
                        self.client.address, CLIENT_STOP_TIMEOUT)


# -- the workload -------------------------------------------------------------


@dataclass
class TransferStats:
    """Outcomes and latencies of the transfers sent so far."""

    ok: int = 0
    refused: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.ok + self.refused + self.failed

    def record(self, outcome: str, latency: float) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.latencies.append(latency)


def account_id(index: int) -> str:
    return "acct-%05d" % index


def open_accounts(count: int, balance: int, concurrency: int) -> None:
    """Open ``count`` accounts in parallel; fail loudly if one refuses."""
    def open_one(index: int) -> None:
        reply = goverse.call_object(accounts.ACCOUNT, account_id(index), "Open",
                                    bank.OpenRequest(initial_balance=balance))
        if reply.code != bank.OK:
            raise RuntimeError("opening %s failed: %s" % (account_id(index), reply.error))

    run_workers(concurrency, lambda worker: _drain(worker, concurrency, count, open_one))


def _drain(worker: int, workers: int, count: int, work) -> None:
    for index in range(worker, count, workers):
        work(index)


class TransferRun:
    """Random transfers from a fixed set of greenlets until a count or a time."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats = TransferStats()
        self.random = random.Random(args.seed)
        self.started = 0.0
        self.elapsed = 0.0
        self._issued = 0
        self._stop_at: float | None = None

    def run(self) -> TransferStats:
        self.started = time.monotonic()
        if self.args.duration is not None:
            self._stop_at = self.started + self.args.duration
        progress = gevent.spawn(self._show_progress)
        try:
            run_workers(self.args.concurrency, self._worker)
        finally:
            progress.kill()
            self.elapsed = time.monotonic() - self.started
        self._print_progress(final=True)
        return self.stats

    def _more(self) -> bool:
        if self._stop_at is not None:
            return time.monotonic() < self._stop_at
        if self._issued >= self.args.transfers:
            return False
        self._issued += 1
        return True

    def _worker(self, worker: int) -> None:
        while self._more():
            source, destination = self.random.sample(range(self.args.accounts), 2)
            amount = self.random.randint(1, self.args.max_amount)
            self._transfer(account_id(source), account_id(destination), amount)

    def _transfer(self, source: str, destination: str, amount: int) -> None:
        request = bank.TransferRequest(to_account=destination, amount=amount)
        began = time.monotonic()
        try:
            reply = goverse.call_object(accounts.ACCOUNT, source, "Transfer", request)
        except goverse.GoverseError as exc:
            self._failed("transfer %s -> %s raised %s: %s", source, destination,
                         type(exc).__name__, exc)
            self.stats.record("failed", time.monotonic() - began)
            return
        latency = time.monotonic() - began
        if reply.code == bank.OK:
            self.stats.record("ok", latency)
        elif reply.code == bank.INSUFFICIENT_FUNDS:
            self.stats.record("refused", latency)
        else:
            self._failed("transfer %s -> %s refused: %s", source, destination, reply.error)
            self.stats.record("failed", latency)

    def _failed(self, message: str, *args: object) -> None:
        if self.stats.failed < LOGGED_FAILURES:
            log.warning(message, *args)

    # ---- progress on stderr ----------------------------------------------

    def _show_progress(self) -> None:
        while True:
            gevent.sleep(0.25)
            self._print_progress(final=False)

    def _print_progress(self, final: bool) -> None:
        # An updating line needs a terminal; elsewhere only the last one shows.
        if not (final or sys.stderr.isatty()):
            return
        stats = self.stats
        elapsed = max(time.monotonic() - self.started, 1e-9)
        if self._stop_at is not None:
            target = "%d in %.0fs/%.0fs" % (stats.done, min(elapsed, self.args.duration),
                                            self.args.duration)
        else:
            target = "%d/%d" % (stats.done, self.args.transfers)
        line = "transfers %s  %.0f/s  refused %d  errors %d" % (
            target, stats.done / elapsed, stats.refused, stats.failed)
        if sys.stderr.isatty():
            line = "\r\033[K" + line  # back to the start of the line, and clear it
        sys.stderr.write(line + ("\n" if final else ""))
        sys.stderr.flush()


def run_workers(count: int, work) -> None:
    """Run ``work(i)`` for i in range(count) in greenlets; re-raise the first error."""
    group = Group()
    try:
        workers = [group.spawn(work, index) for index in range(count)]
        for worker in gevent.iwait(workers):
            worker.get()  # re-raises the worker's exception, if any
    finally:
        group.kill(block=True, timeout=5)


@dataclass
class Ledger:
    """What the accounts hold at the end of a run."""

    total: int = 0
    closed: int = 0  # accounts no longer open (their state was lost)
    in_doubt: int = 0  # money in transfers whose deposit is in doubt
    in_doubt_transfers: int = 0
    settled: int = 0  # transfers in doubt that Resolve settled before the count
    doubtful: list[int] = field(default_factory=list)  # accounts with transfers in doubt


def count_money(count: int, concurrency: int) -> Ledger:
    """Read every balance; when transfers are in doubt, settle them and read again."""
    ledger = read_balances(count, concurrency)
    if not ledger.doubtful:
        return ledger
    settled = [0]

    def resolve_one(index: int) -> None:
        reply = goverse.call_object(accounts.ACCOUNT, account_id(index), "Resolve",
                                    bank.ResolveRequest())
        settled[0] += reply.deposited + reply.refunded

    doubtful = ledger.doubtful
    run_workers(concurrency, lambda worker: _drain(
        worker, concurrency, len(doubtful), lambda i: resolve_one(doubtful[i])))
    # Every deposit Resolve made must be in the count: read everything again.
    ledger = read_balances(count, concurrency)
    ledger.settled = settled[0]
    return ledger


def read_balances(count: int, concurrency: int) -> Ledger:
    ledger = Ledger()

    def read_one(index: int) -> None:
        reply = goverse.call_object(accounts.ACCOUNT, account_id(index), "Balance",
                                    bank.BalanceRequest())
        ledger.total += reply.balance
        if not reply.open:
            ledger.closed += 1
        if reply.in_doubt_transfers:
            ledger.in_doubt += reply.in_doubt
            ledger.in_doubt_transfers += reply.in_doubt_transfers
            ledger.doubtful.append(index)

    run_workers(concurrency, lambda worker: _drain(worker, concurrency, count, read_one))
    return ledger


# -- the summary --------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, int(round(fraction * len(ordered) + 0.5)))
    return ordered[min(rank, len(ordered)) - 1]


def print_summary(args: argparse.Namespace, run: TransferRun,
                  per_node: list[tuple[str, int | str]], ledger: Ledger,
                  expected: int) -> bool:
    """Print the run's results; True when the total balance was conserved."""
    stats = run.stats
    ordered = sorted(stats.latencies)
    ms = [1000 * percentile(ordered, f) for f in (0.5, 0.9, 0.99)]
    ms.append(1000 * ordered[-1] if ordered else 0.0)
    print("nodes:          %d node processes + 1 client (routes calls, hosts none)" % args.nodes)
    print("accounts:       %d, opened with %d each" % (args.accounts, args.initial_balance))
    print("transfers:      %d ok, %d refused (insufficient funds), %d failed" % (
        stats.ok, stats.refused, stats.failed))
    print("throughput:     %.0f transfers/s (%d in %.2fs, concurrency %d)" % (
        stats.done / max(run.elapsed, 1e-9), stats.done, run.elapsed, args.concurrency))
    print("latency (ms):   p50 %.2f  p90 %.2f  p99 %.2f  max %.2f" % tuple(ms))
    print("objects per node:")
    for address, count in per_node:
        print("  %-32s %s" % (address, count))
    return print_conservation(ledger, expected)


def print_conservation(ledger: Ledger, expected: int) -> bool:
    """Print whether money was conserved; True only when it provably was.

    Money in doubt left its source and may or may not be in its
    destination's balance, so while any remains the total can only be
    checked to lie between ``expected - in_doubt`` and ``expected``.
    """
    if ledger.settled or ledger.in_doubt_transfers:
        print("in doubt:       %d transfers settled by Resolve before the count, %d still "
              "in doubt" % (ledger.settled, ledger.in_doubt_transfers))
    total = ledger.total
    if total == expected and ledger.closed == 0 and ledger.in_doubt_transfers == 0:
        print("total balance conserved: %d == %d" % (total, expected))
        return True
    if ledger.in_doubt_transfers and ledger.closed == 0 \
            and expected - ledger.in_doubt <= total <= expected:
        print("!!! TOTAL BALANCE NOT VERIFIED: %d, with %d more in doubt in %d transfers, "
              "against %d !!!" % (total, ledger.in_doubt, ledger.in_doubt_transfers, expected))
    else:
        print("!!! TOTAL BALANCE NOT CONSERVED: %d != %d (%d in doubt in %d transfers, %d "
              "accounts lost their state) !!!" % (total, expected, ledger.in_doubt,
                                                  ledger.in_doubt_transfers, ledger.closed))
    return False


# -- entry ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # Python's own SIGINT handler raises in whichever greenlet happens to
    # run, often one of grpc's or etcd's. These handlers only queue the
    # exception into the main greenlet, whose finally block cleans up.
    main_greenlet = gevent.getcurrent()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, gevent.kill, main_greenlet, KeyboardInterrupt)

    log_dir = tempfile.mkdtemp(prefix="goverse-bank-")
    print("node logs in %s" % log_dir, file=sys.stderr)
    cluster = LocalCluster(args.nodes, log_dir)
    succeeded = False
    try:
        succeeded = run_demo(args, cluster)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the cluster", file=sys.stderr)
        return 130
    finally:
        cluster.stop()
        if succeeded and not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            print("node logs kept in %s" % log_dir, file=sys.stderr)
    return 0 if succeeded else 1


def run_demo(args: argparse.Namespace, cluster: LocalCluster) -> bool:
    """Start the cluster, run the workload, print the summary; True on success."""
    began = time.monotonic()
    cluster.start()
    # Balances live in memory only, so accounts are opened after the shard
    # map settles: a shard moving later would take its accounts' money.
    cluster.wait_settled()
    print("cluster of %d nodes settled in %.1fs" % (args.nodes, time.monotonic() - began),
          file=sys.stderr)

    open_accounts(args.accounts, args.initial_balance, args.concurrency)
    cluster.wait_settled()
    run = TransferRun(args)
    run.run()

    ledger = count_money(args.accounts, args.concurrency)
    conserved = print_summary(args, run, cluster.objects_per_node(), ledger,
                              args.accounts * args.initial_balance)
    return conserved and run.stats.failed == 0


if __name__ == "__main__":
    sys.exit(main())
