"""``python -m bench``: run the scenarios, print a table, rewrite RESULTS.md."""

# Patch first, before anything opens a socket or a thread.
from goverse import runtime

runtime.patch()

import argparse  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

from goverse.etcd_server import EtcdServer  # noqa: E402

from bench import SCENARIOS, report  # noqa: E402
from bench.harness import Outcome, Run  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure goverse against baselines taken in the same run.")
    parser.add_argument("--short", action="store_true",
                        help="small sizes (the whole run in about a minute); "
                             "RESULTS.md is left alone unless --write is given")
    parser.add_argument("--only", default="",
                        help="comma-separated scenarios to run: " + ", ".join(SCENARIOS))
    parser.add_argument("--write", action="store_true",
                        help="rewrite RESULTS.md even in short mode")
    parser.add_argument("--results", default=RESULTS, help="where to write the results")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the node and etcd logs of the run")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error("unknown scenario %s; choose from %s" % (
            ", ".join(unknown), ", ".join(SCENARIOS)))
    args.selected = names or list(SCENARIOS)
    return args


def run_scenario(name: str, ctx: Run) -> Outcome:
    module = importlib.import_module(SCENARIOS[name])
    print("== %s: %s" % (name, module.TITLE), flush=True)
    started = time.perf_counter()
    try:
        outcome = module.run(ctx)
    except Exception as exc:
        traceback.print_exc()
        outcome = Outcome(name, error="%s: %s" % (type(exc).__name__, exc))
    outcome.seconds = time.perf_counter() - started
    print(report.scenario_lines(outcome), flush=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = os.environ.get("BENCH_COMMAND") or " ".join(
        ["python -m bench"] + (sys.argv[1:] if argv is None else argv))
    log_dir = tempfile.mkdtemp(prefix="goverse-bench-")
    # goverse's warnings (streams to killed nodes ending, say) go to a file:
    # the failover scenario provokes them on purpose.
    logging.basicConfig(level=logging.WARNING, filename=os.path.join(log_dir, "bench.log"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    etcd = EtcdServer(name="goverse-bench-etcd",
                      log_path=os.path.join(log_dir, "etcd.log")).start()
    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        ctx = Run(short=args.short, etcd_endpoint=etcd.endpoint, log_dir=log_dir)
        outcomes = [run_scenario(name, ctx) for name in args.selected]
    finally:
        etcd.stop()
    elapsed = time.perf_counter() - started

    print()
    print(report.table(outcomes))
    print("\n%d scenarios in %.1f s; logs in %s" % (len(outcomes), elapsed, log_dir))
    if not args.short or args.write:
        report.write(args.results, outcomes, command=command, short=args.short,
                     seconds=elapsed, load=(load_at_start, os.getloadavg()[0]))
        print("wrote %s" % (args.results,))
    failed = [o.scenario for o in outcomes if o.error]
    if failed:
        print("FAILED: %s (logs kept in %s)" % (", ".join(failed), log_dir))
        return 1
    if not args.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
