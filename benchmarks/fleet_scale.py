"""How a rollout's cost grows with the fleet: 10, 100 and 1000 local devices, then a report of 1000 x 10.

    python benchmarks/fleet_scale.py [--sizes 10,100,1000] [--ansible-sizes 10,100,1000] [--workers 8]
                                     [--out bench-results/fleet_scale.json]
    python benchmarks/fleet_scale.py --report-only [--rolled 10] [--devices 1000] [--keep DIR]

Both engines roll out to the same kind of fleet: edgekit's own, and Ansible's (ansible-runner
with the playbook edgekit ships, Ansible's `local` connection: no sshd per device), each
size in a fresh fleet.

Each size runs in its own process (so that its peak memory is its own): that many local
devices (folders on this machine, each with the device Python of the tests when there is
one), the example digits bundle rolled out to all of them with the native engine
(`edgekit.fleet.rollout.rollout`, canary 1 then batches of 25%), every device installing,
activating and evaluating it on 100 samples. Measured:

    seconds, seconds per device     the whole rollout (wall), and over the devices
    cpu s per device                CPU time of the host process and every process it
                                    waited for (device runners, ansible-playbook), over the devices
    host peak MB                    the host process's peak resident memory (ru_maxrss);
                                    the device runners are processes of their own
    store write s                   time spent in the store's writes (statements and commits)
    report s                        the store loaded and rendered as `edgekit report` does
                                    it (terminal table and HTML)

Then a store of 1000 devices x 10 versions (the 1000-device rollout's real reports and
deploy events, each copied under 10 versions and validated as `collect` does: real runs of
10,000 evaluations would take hours here) is loaded, analysed and rendered, table and HTML,
a few times (the median), and `edgekit report -f html` runs on it end to end, a new
process each time, beside `edgekit --help` (the CLI's start-up alone).

--report-only skips the 10/100/1000 rollouts (15 minutes here): it rolls out to --rolled
local devices (10) and copies their real reports under --devices names (1000) x 10
versions, then measures the report as above (a minute). Results go to JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's edgekit
from _checkout import compile_edgekit  # noqa: E402  (benchmarks/, beside this script)
DEVICE_VENV_PYTHON = REPO / ".venv-device" / "bin" / "python"  # numpy + onnxruntime, made by the tests


def device_python() -> str:
    ready = DEVICE_VENV_PYTHON.exists() and subprocess.run(
        [str(DEVICE_VENV_PYTHON), "-c", "import numpy, onnxruntime"], capture_output=True).returncode == 0
    return str(DEVICE_VENV_PYTHON) if ready else sys.executable


def build_bundle(work: Path):
    from edgekit.datasets import load_dataset
    from edgekit.package import package
    from edgekit.targets import load_profile

    return package(REPO / "examples" / "digits" / "model.onnx", load_profile("host-cpu"),
                   load_dataset(REPO / "calibration" / "digits" / "eval.npz"), name="digits", version="1.0.0",
                   out_dir=work / "dist", eval_samples=100)


def write_inventory(work: Path, n: int, python: str) -> Path:
    lines = []
    for i in range(n):
        lines += ["[[device]]", f'name = "dev-{i:04d}"', 'transport = "local"', f'root = "{work}/devices/dev-{i:04d}"',
                  'target = "host-cpu"', f"python = {json.dumps(python)}", ""]
    path = work / "fleet.toml"
    path.write_text("\n".join(lines))
    return path


class StoreClock:
    """Time spent in the store's writes: every statement that is not a read, and commits."""

    def __init__(self, store):
        self.seconds, self.writes = 0.0, 0
        db = store._db
        plain = db.execute

        def execute(sql, args=()):
            if sql.lstrip()[:6].upper() in ("SELECT", "PRAGMA"):
                return plain(sql, args)
            start = time.perf_counter()
            try:
                return plain(sql, args)
            finally:
                self.seconds += time.perf_counter() - start
                self.writes += 1
        db.execute = execute


def render_report(store_path: Path) -> dict:
    """Load the store and render it as `edgekit report` does: the terminal table and the HTML."""
    import io

    from rich.console import Console

    from edgekit.report.analysis import DriftRules, analyse
    from edgekit.report.fleetdata import load_fleet, plain_data
    from edgekit.report.html import render_fleet
    from edgekit.report.tables import print_fleet

    with plain_data():  # as `edgekit report` does
        cpu = time.process_time()
        start = time.perf_counter()
        data = load_fleet(store_path)
        loaded = time.perf_counter()
        result = analyse(data["reports"], data["devices"], data["rollouts"], models=data["models"],
                         budgets=data["budgets"], collect_errors=data["collect_errors"], rules=DriftRules())
        analysed = time.perf_counter()
        print_fleet(Console(file=io.StringIO(), width=200, no_color=True), result, "all")
        table = time.perf_counter()
        html = render_fleet(result, store=str(store_path), budgets=data["budgets"], filters={})
        done = time.perf_counter()
        cpu = time.process_time() - cpu
    return {"cpu_s": round(cpu, 3), "load_s": round(loaded - start, 3), "analyse_s": round(analysed - loaded, 3),
            "table_s": round(table - analysed, 3), "html_s": round(done - table, 3),
            "total_s": round(done - start, 3), "reports": len(data["reports"]), "html_kb": round(len(html) / 1024)}


def one_size(n: int, work: Path, workers: int, engine: str) -> dict:
    """Child process: one rollout to N devices with `engine` (native or ansible)."""
    from edgekit.bundle import read_bundle
    from edgekit.fleet.inventory import load_inventory
    from edgekit.fleet.rollout import rollout
    from edgekit.store import Store

    # A device keeps the runner's compiled bytecode between runs; a host that asks Python not
    # to write any (this one does) would make every runner step compile it again.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    bundle = read_bundle(Path(json.loads((work / "bundle.json").read_text())["path"]))
    devices = load_inventory(write_inventory(work, n, device_python())).devices
    with Store(work / "edgekit.db") as store:
        clock = StoreClock(store)
        chosen = None
        if engine == "ansible":
            from edgekit.fleet.ansible_engine import AnsibleEngine

            chosen = AnsibleEngine(workers=workers)
        start, cpu = time.perf_counter(), _cpu_seconds()
        result = rollout(bundle, devices, store, canary=1, batch="25%", samples=100, workers=workers, engine=chosen)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    report = render_report(work / "edgekit.db")
    return {"engine": engine, "devices": n, "outcome": result.outcome, "seconds": round(seconds, 2),
            "s_per_device": round(seconds / n, 4), "cpu_s_per_device": round(cpu / n, 3),
            "host_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "child_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "store_write_s": round(clock.seconds, 3), "store_writes": clock.writes, "report": report}


def _cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (device runners, ansible-playbook)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def copy_fleet(source: Path, target: Path, devices: int, versions: int = 10) -> dict:
    """A store of `devices` x `versions` made of the real reports and rollout records of
    `source`: device i gets the report of the source's device i mod n (its name put in),
    under each version, validated as `collect` validates a report file; each version has
    the rollout it would have (canary 1, batches of 25%), with every device's deploy event
    as the source recorded it, and the store's belief of what runs where."""
    from edgekit.device_report import validate_report
    from edgekit.fleet.rollout import plan_waves
    from edgekit.store import Store

    with Store(source) as src, Store(target) as dst:
        reports = {row["device"]: row["report"].record() for row in src.reports()}
        deploys = {e["device"]: e for r in src.rollouts_whole() for e in r["events"] if e["event"] == "deploy"}
        known = {d["name"]: d for d in src.devices()}
        origin = sorted(reports)
        names = [f"dev-{i:04d}" for i in range(devices)]
        for v in range(versions):
            version = f"1.0.{v}"
            with dst.batch():
                for i, name in enumerate(names):
                    raw = copy.deepcopy(reports[origin[i % len(origin)]])
                    raw["run_id"] = f"{raw['run_id']}-{name}-v{v}"
                    raw["device"] = {**raw["device"], "name": name}
                    raw["bundle"] = {**raw["bundle"], "version": version}
                    filed = f"reports/{raw['bundle']['name']}/{version}/{raw['run_id']}.json"
                    report = validate_report(json.dumps(raw).encode(), f"{filed} from {name}",
                                             name=raw["bundle"]["name"], version=version, run_id=raw["run_id"])
                    dst.add_report(name, report, source=filed)
            _copy_rollout(dst, raw["bundle"], version, f"1.0.{v - 1}" if v else None, names,
                          [deploys.get(origin[i % len(origin)]) for i in range(devices)], plan_waves(names, 1, "25%"))
        for i, name in enumerate(names):
            d = known.get(origin[i % len(origin)]) or {}
            dst.touch_device(name, target=d.get("target"), transport=d.get("transport"), reachable=True)
    return {"devices": devices, "versions": versions, "source_devices": len(origin)}


def _copy_rollout(store, bundle: dict, version: str, previous: Optional[str], names: list[str],
                  deploys: list, waves: list) -> None:
    """One completed rollout of `version` (after `previous`) to `names`: its waves, each
    device's deploy event (its source device's) and what the store then believes it runs."""
    rid = store.start_rollout(name=bundle["name"], version=version, target=bundle["target"] or "",
                              sha256=bundle["sha256"] or "0" * 64, path="fleet_scale copy",
                              options={"canary": 1, "batch": "25%", "devices": names})
    event = dict(zip(names, deploys))
    was, now = {"current": previous, "previous": None}, {"current": version, "previous": previous}
    with store.batch():
        for wave, (kind, members) in enumerate(waves, 1):
            store.start_wave(rid, wave, kind, members)
            for name in members:
                if event[name] is not None:
                    store.add_event(rid, wave, name, "deploy", event[name]["ok"],
                                    {**event[name]["detail"], "before": was, "live": was})
                store.record_change(name, bundle["name"], "deploy", ok=True, before=was, after=now, rollout_id=rid)
            store.finish_wave(rid, wave, "passed")
    store.finish_rollout(rid, "completed")


def ten_versions(source: Path, work: Path, repeats: int, devices: Optional[int] = None) -> dict:
    """A store of `devices` (default: as many as `source` has) x 10 versions copied from
    `source` (copy_fleet); load and render it `repeats` times."""
    from edgekit.store import Store

    if devices is None:
        with Store(source) as src:
            devices = len(src.devices())
    target = work / "ten-versions.db"
    start = time.perf_counter()
    made = copy_fleet(source, target, devices, 10)
    copied = time.perf_counter() - start
    runs = [render_report(target) for _ in range(repeats)]
    return {**made, "reports": runs[0]["reports"], "copy_s": round(copied, 1), "store": str(target),
            "median": {k: statistics.median(r[k] for r in runs) for k in runs[0] if k.endswith("_s")},
            "runs": [r["total_s"] for r in runs]}


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a new process running argv from this checkout."""
    cpu, start = _child_cpu(), time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    seconds, cpu = time.perf_counter() - start, _child_cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return round(seconds, 3), round(cpu, 3)


def cli_report(store: Path, out: Path) -> tuple[float, float]:
    """`edgekit report --store STORE -f html -o OUT` in a new process, start-up included."""
    return _timed([sys.executable, "-m", "edgekit.cli.main", "report", "--store", str(store), "-f", "html",
                   "-o", str(out)])


def cli_start() -> tuple[float, float]:
    """`edgekit --help` in a new process: the CLI's start-up alone."""
    return _timed([sys.executable, "-m", "edgekit.cli.main", "--help"])


def roll_out(n: int, bundle, base: Path, workers: int, engine: str = "native") -> tuple[Path, dict]:
    """A rollout to N local devices with `engine` in a process of its own: (its store, its measurements)."""
    work = base / f"{engine}-{n}"
    work.mkdir()
    (work / "bundle.json").write_text(json.dumps({"path": str(bundle.path)}))
    print(f"rolling out to {n} local devices with the {engine} engine", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--work", str(work), "--workers", str(workers),
                           "--engine", engine], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {n}-device rollout failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {row['seconds']} s ({row['cpu_s_per_device']} CPU s a device), outcome {row['outcome']}", flush=True)
    print(f"  row: {json.dumps(row)}", flush=True)  # kept in the log should a later size not finish
    return work / "edgekit.db", row


def report_of(source: Path, base: Path, devices: Optional[int], repeats: int) -> dict:
    """The 10-version report: in-process parts, then the CLI end to end and its start-up alone."""
    who = f"{devices} devices" if devices else "the rollout's devices"
    print(f"a report of {who} x 10 versions", flush=True)
    ten = ten_versions(source, base, repeats, devices)
    compiled = compile_edgekit()
    cli = [cli_report(Path(ten["store"]), base / "fleet.html") for _ in range(repeats)]
    start = [cli_start() for _ in range(repeats)]
    return {**ten, "cli_html_s": statistics.median(w for w, _ in cli),
            "cli_html_cpu_s": statistics.median(c for _, c in cli), "cli_html_runs": [w for w, _ in cli],
            "cli_start_s": statistics.median(w for w, _ in start), "cli_start_cpu_s": statistics.median(c for _, c in start),
            "edgekit_bytecode": "compiled before the CLI timings" if compiled else "compiling failed: sources compiled each run"}


NOTES = ["local devices: folders on this machine; every runner step is a process on the same 2 cores",
         "store write s: statements that are not reads, and commits, timed where the store runs them",
         "the 10-version store holds real reports and deploy events of a rollout, each copied under 10 versions "
         "(and, past the rollout's devices, under more device names) and validated as collect validates a report",
         "cli_html_s: `edgekit report -f html -o FILE` in a new process; cli_start_s: `edgekit --help`; "
         "both with edgekit byte-compiled first, as an installed copy is",
         "cpu_s: CPU seconds the process itself used (user + system), beside the wall seconds: on a shared "
         "machine the wall seconds count the other work too"]


def run(runs: list[tuple[str, int]], workers: int, base: Path, repeats: int) -> dict:
    from edgekit.machine import cpu_facts

    bundle = build_bundle(base)
    done = [(row, store) for store, row in (roll_out(n, bundle, base, workers, engine) for engine, n in runs)]
    # both engines store the same records: the largest fleet's (the native one's on a tie)
    _, largest = max(done, key=lambda d: (d[0]["devices"], d[0]["engine"] == "native"))
    return {"benchmark": "fleet_scale", "workers": workers, "device_python": device_python(),
            "sizes": [row for row, _ in done], "ten_versions": report_of(largest, base, None, repeats),
            "machine": cpu_facts(), "notes": NOTES}


def report_only(rolled: int, devices: int, workers: int, base: Path, repeats: int) -> dict:
    """A small real rollout, its reports copied under `devices` names x 10 versions, reported."""
    from edgekit.machine import cpu_facts

    store, row = roll_out(rolled, build_bundle(base), base, workers)
    return {"benchmark": "fleet_scale --report-only", "workers": workers, "device_python": device_python(),
            "rolled_out": row, "ten_versions": report_of(store, base, devices, repeats), "machine": cpu_facts(),
            "notes": NOTES}


def show(record: dict) -> None:
    if "sizes" in record:
        _show_sizes(record)
    ten = record["ten_versions"]
    parts = ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in ten["median"].items())
    print(f"report of {ten['devices']} devices x {ten['versions']} versions ({ten['reports']} reports, copied from "
          f"{ten['source_devices']} devices in {ten['copy_s']} s), median of {len(ten['runs'])}: {parts}")
    print(f"edgekit report -f html end to end: median {ten['cli_html_s']:.2f} s, CPU {ten['cli_html_cpu_s']:.2f} s "
          f"(runs {ten['cli_html_runs']}); edgekit --help alone: {ten['cli_start_s']:.2f} s, CPU "
          f"{ten['cli_start_cpu_s']:.2f} s")


def _show_sizes(record: dict) -> None:
    print(f"\n{'engine':>8} {'devices':>8} {'seconds':>9} {'s/device':>9} {'cpu s/dev':>9} {'host MB':>8} "
          f"{'store s':>8} {'writes':>7} {'report s':>9}")
    for row in record["sizes"]:
        print(f"{row['engine']:>8} {row['devices']:8d} {row['seconds']:9.1f} {row['s_per_device']:9.3f} "
              f"{row['cpu_s_per_device']:9.3f} {row['host_peak_mb']:8.0f} {row['store_write_s']:8.2f} "
              f"{row['store_writes']:7d} {row['report']['total_s']:9.2f}")
    for engine in dict.fromkeys(r["engine"] for r in record["sizes"]):
        rows = [r for r in record["sizes"] if r["engine"] == engine]
        for row in rows[1:]:
            grow = row["devices"] / rows[0]["devices"]
            print(f"{engine}, x{grow:g} devices: x{row['seconds'] / rows[0]['seconds']:.1f} time, "
                  f"x{row['s_per_device'] / rows[0]['s_per_device']:.2f} per device, "
                  f"x{row['host_peak_mb'] / rows[0]['host_peak_mb']:.2f} host memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="fleet sizes for the native engine")
    parser.add_argument("--ansible-sizes", default="10,100,1000",
                        help="fleet sizes for the Ansible engine ('' for none; needs the ansible extra)")
    parser.add_argument("--engine", default="native", help=argparse.SUPPRESS)  # the child's engine
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "fleet_scale.json")
    parser.add_argument("--report-only", action="store_true",
                        help="no 10/100/1000 rollouts: roll out to --rolled devices, copy their reports under "
                             "--devices names x 10 versions, and measure only the report")
    parser.add_argument("--rolled", type=int, default=10)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the work directory (the stores) here")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)   # the child: one size
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.work, args.workers, args.engine)))
        return
    runs = [("native", int(s)) for s in args.sizes.split(",") if s]
    runs += [("ansible", int(s)) for s in args.ansible_sizes.split(",") if s]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        record = report_only(args.rolled, args.devices, args.workers, base, args.repeats) if args.report_only \
            else run(runs, args.workers, base, args.repeats)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    show(record)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
