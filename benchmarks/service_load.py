"""Load test of the screening node (`cxrad serve`), on loopback only and bounded in films and time.

    python benchmarks/service_load.py                                   # 3 associations x 80 films, 2 HTTP x 30
    python benchmarks/service_load.py --associations 4 --dicom-films 50 --http-clients 4 --http-films 20

The node runs as its own process (`cxrad serve`, the shipped default model, SQLite in a temporary state
folder) with a destination SCP in this process that receives its Structured Reports. N DICOM associations
(one modality each, C-STORE of distinct 224 px CR films made from the kermany224 test JPEGs) and H HTTP clients
(POST /v1/images of distinct JPEGs) send at the same time. Measured:

- throughput: films recorded per second, from the first film sent to the last result recorded;
- latency per film, from the moment its sender started sending it to its result in the database (and, for
  DICOM films, to its report arriving at the destination): p50, p95, p99;
- the node's peak RSS (VmHWM of the process);
- lost results (acknowledged films without a result) and duplicated ones (a film recorded twice, a report
  received twice): both must be 0;
- against the model alone: `det.score_arrays` on the same films preloaded as arrays, in this process, with 1
  thread and with one per core (measured before and after the node run; the faster is the reference).

Writes OUT/service_load.md (and .json) with the command that produced it and the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CXRAD_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "tests"))  # the films and the destination SCP of the node's tests
from common import git_commit, time_model_alone  # noqa: E402  (benchmarks/common.py)


def percentile(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def model_alone(det, files: list[str], batch_size: int) -> tuple[dict, float]:
    """Images per second of the model on the films preloaded as arrays, each way it can run
    (``common.model_alone_ways``); and CPU milliseconds per image on 1 thread."""
    from cxrad.data import load_images
    from cxrad.serving.streaming import available_cpus
    arrays = np.asarray(load_images(files, det.prep, workers=2).images)
    measured = time_model_alone(det, arrays, available_cpus(), batch_size)
    return {k: v["img_s"] for k, v in measured.items()}, measured["one batch at a time, 1 thread"]["cpu_ms"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--associations", type=int, default=3, help="concurrent DICOM associations (3)")
    ap.add_argument("--dicom-films", type=int, default=80, help="films sent by each association (80)")
    ap.add_argument("--http-clients", type=int, default=2, help="concurrent HTTP clients (2)")
    ap.add_argument("--http-films", type=int, default=30, help="films posted by each HTTP client (30)")
    ap.add_argument("--batch-size", type=int, default=16, help="the node's largest batch (16)")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="the node's batching wait (5 ms)")
    ap.add_argument("--max-seconds", type=float, default=600, help="give up after this long (600)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--note", default="shared with other jobs (model trainings and other test runs)",
                    help="said of the machine in the table's heading (e.g. 'nothing else running')")
    args = ap.parse_args(argv)
    total_dicom, total_http = args.associations * args.dicom_films, args.http_clients * args.http_films
    if total_dicom + total_http > 2000 or args.max_seconds > 1800:
        raise SystemExit("bounded: at most 2000 films and 30 minutes")

    import httpx
    from pynetdicom import AE

    from cxrad.bundles import default_name
    from cxrad.detectors import load_detector
    from dicom_films import Receiver, film_dataset

    jpegs = sorted(str(p) for p in (DATA / "kermany224" / "test").rglob("*.jpeg"))
    if len(jpegs) < total_dicom + total_http:
        jpegs = jpegs * ((total_dicom + total_http) // max(1, len(jpegs)) + 1)  # DICOM films stay distinct by UID
    dicom_sources, http_files = jpegs[:total_dicom], jpegs[total_dicom:total_dicom + total_http]
    if len(set(http_files)) < len(http_files):
        raise SystemExit("not enough distinct JPEGs for the HTTP clients (uploads are deduplicated by content)")
    films = [[film_dataset(Path(dicom_sources[a * args.dicom_films + i]), patient_id=f"LOAD-{a}-{i}")
              for i in range(args.dicom_films)] for a in range(args.associations)]

    det = load_detector(None, device="cpu")
    load_before = [round(v, 1) for v in os.getloadavg()]
    alone_before, cpu_before = model_alone(det, dicom_sources + http_files, args.batch_size)

    arrivals: dict[str, float] = {}  # source film's SOP Instance UID -> when its report arrived

    def arrived(ds):
        try:
            ref = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
                .ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        except (AttributeError, IndexError):
            return
        arrivals.setdefault(str(ref), time.time())
    pacs = Receiver(ae_title="LOADPACS", on_store=arrived)

    tmp = Path(tempfile.mkdtemp(prefix="cxrad-load-"))
    dicom_port, http_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "cxrad", "serve", "--state", str(tmp / "state"), "--dicom-port", str(dicom_port),
           "--http-port", str(http_port), "--destination", pacs.destination, "--batch-size", str(args.batch_size),
           "--max-wait-ms", str(args.max_wait_ms), "--log-level", "info"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    log = open(tmp / "node.log", "wb")
    node = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or node.poll() is not None:
            raise SystemExit((tmp / "node.log").read_text()[-2000:])
        time.sleep(0.2)

    cpu_at_start = cpu_seconds(node.pid)
    sent: dict[str, float] = {}  # SOP Instance UID or film id -> time its sending started
    acked: set[str] = set()
    refused: list[str] = []
    lock = threading.Lock()

    def dicom_sender(batch):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(batch[0].SOPClassUID, ["1.2.840.10008.1.2.1"])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="CXRAD")
        for ds in batch:
            t = time.time()
            status = assoc.send_c_store(ds)
            with lock:
                sent[ds.SOPInstanceUID] = t
                (acked.add if status and status.get("Status") == 0 else refused.append)(ds.SOPInstanceUID)
        assoc.release()

    http_ids: dict[str, str] = {}

    def http_client(paths):
        with httpx.Client(base_url=base, timeout=60) as client:
            for p in paths:
                t = time.time()
                r = client.post("/v1/images", files={"file": ("film.jpeg", Path(p).read_bytes(), "image/jpeg")})
                with lock:
                    if r.status_code in (200, 202):
                        film_id = r.json()["id"]
                        sent[film_id] = t
                        acked.add(film_id)
                        http_ids[film_id] = p
                    else:
                        refused.append(p)

    workers = [threading.Thread(target=dicom_sender, args=(b,)) for b in films] + [
        threading.Thread(target=http_client, args=(http_files[c * args.http_films:(c + 1) * args.http_films],))
        for c in range(args.http_clients)]
    t_start = time.time()
    for w in workers:
        w.start()
    for w in workers:
        w.join(args.max_seconds)
    t_sent = time.time()

    import sqlalchemy as sa
    engine = sa.create_engine(f"sqlite:///{tmp / 'state' / 'node.db'}")
    deadline = time.monotonic() + args.max_seconds
    dicom_acked = {u for u in acked if u not in http_ids}
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            done = conn.exec_driver_sql("select count(*) from films").scalar()
            busy = conn.exec_driver_sql("select count(*) from deliveries where state in ('pending','sending')").scalar()
        if done >= len(acked) and not busy and dicom_acked <= set(arrivals):
            break
        time.sleep(0.2)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("select id, sop_instance_uid, received_at, scored_at, verdict from films").all()
        deliveries = dict(conn.exec_driver_sql("select state, count(*) from deliveries group by state").all())
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    rss = peak_rss_mib(node.pid)
    node_cpu = cpu_seconds(node.pid) - cpu_at_start
    node.terminate()
    node.wait(60)
    pacs.stop()
    alone_after, cpu_after = model_alone(det, dicom_sources + http_files, args.batch_size)
    load_after = [round(v, 1) for v in os.getloadavg()]

    def ts(value) -> float:
        return datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc).timestamp()

    key_of = {r[0]: (r[1] or r[0]) for r in rows}  # film id -> the key its sender used
    scored_at = {key_of[r[0]]: ts(r[3]) for r in rows}
    recorded_keys = [key_of[r[0]] for r in rows]
    lost = sorted(set(acked) - set(recorded_keys))
    duplicated = len(recorded_keys) - len(set(recorded_keys))
    received = pacs.uids()
    sr_duplicates = len(received) - len(set(received))
    latency = [scored_at[k] - sent[k] for k in acked if k in scored_at]
    sr_latency = [arrivals[u] - sent[u] for u in dicom_acked if u in arrivals]
    first, last = min(sent.values()), max(scored_at.values()) if scored_at else time.time()
    throughput = len(rows) / (last - first)
    alone = {t: max(alone_before[t], alone_after[t]) for t in alone_before}
    best_way = max(alone, key=alone.get)
    from prometheus_client.parser import text_string_to_metric_families
    samples = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples if not s.labels}
    mean_batch = samples["cxrad_batch_films_sum"] / max(1.0, samples["cxrad_batch_films_count"])
    chosen = int(samples.get("cxrad_model_threads", 0))
    report = {
        "command": "PYTHONPATH=src python benchmarks/service_load.py " + " ".join(sys.argv[1:] if argv is None
                                                                                 else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "note": args.note, "model": default_name(),
        "commit": git_commit(ROOT),
        "cores": len(os.sched_getaffinity(0)), "load_before": load_before, "load_after": load_after,
        "associations": args.associations, "http_clients": args.http_clients,
        "films_sent": len(sent), "acknowledged": len(acked), "refused": len(refused), "recorded": len(rows),
        "lost": len(lost), "duplicated_results": duplicated, "duplicated_reports": sr_duplicates,
        "reports_received": len(received), "deliveries": deliveries,
        "sending_s": t_sent - t_start, "throughput": throughput,
        "latency_s": {q: percentile(latency, q) for q in (50, 95, 99)},
        "report_latency_s": {q: percentile(sr_latency, q) for q in (50, 95, 99)},
        "peak_rss_mib": rss, "model_alone": {"before": alone_before, "after": alone_after},
        "model_alone_best": alone[best_way], "model_alone_best_way": best_way,
        "ratio": throughput / alone[best_way], "mean_batch": mean_batch, "node_model_threads": chosen,
        "node_cpu_ms_per_film": 1000 * node_cpu / max(1, len(rows)),
        "model_cpu_ms_per_film": min(cpu_before, cpu_after),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "service_load.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "service_load.md").write_text(render(report))
    print((out / "service_load.md").read_text())
    return 0 if not lost and not duplicated and not sr_duplicates else 1


def render(r: dict) -> str:
    lat, srl = r["latency_s"], r["report_latency_s"]
    alone = r["model_alone"]
    return "\n".join([
        "# Screening node under load",
        "",
        f"Written by `benchmarks/service_load.py` on {r['date']} at commit {r['commit']}:",
        "",
        "```bash",
        r["command"],
        "```",
        "",
        f"Loopback only. `cxrad serve` (the shipped default model `{r['model']}`, SQLite, reports to a destination "
        f"SCP in the benchmark's process) on {r['cores']} cores, {r['note']}: load average {r['load_before']} "
        f"before and {r['load_after']} after. {r['associations']} DICOM "
        f"associations (C-STORE of distinct 224 px CR films) and {r['http_clients']} HTTP clients (POST "
        "/v1/images of distinct JPEGs) sending at the same time.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| films sent / acknowledged / refused | {r['films_sent']} / {r['acknowledged']} / {r['refused']} |",
        f"| results recorded | {r['recorded']} |",
        f"| **lost** (acknowledged, no result) | **{r['lost']}** |",
        f"| **duplicated** results / reports received twice | **{r['duplicated_results']}** / "
        f"**{r['duplicated_reports']}** |",
        f"| reports received by the destination | {r['reports_received']} (deliveries: {r['deliveries']}) |",
        f"| throughput (first film sent to last result recorded) | {r['throughput']:.1f} films/s |",
        f"| latency, sending started to result recorded: p50 / p95 / p99 | {lat[50]:.2f} / {lat[95]:.2f} / "
        f"{lat[99]:.2f} s |",
        f"| latency, sending started to report at the destination (DICOM): p50 / p95 / p99 | {srl[50]:.2f} / "
        f"{srl[95]:.2f} / {srl[99]:.2f} s |",
        f"| node peak RSS | {r['peak_rss_mib']:.0f} MiB |",
        f"| mean model batch; the node's model threads | {r['mean_batch']:.1f} films; {r['node_model_threads']} |",
        "| model alone on the same films preloaded (`score_arrays`, batches of the node's size), before / after | "
        + "; ".join(f"{t}: {alone['before'][t]:.0f} / {alone['after'][t]:.0f} img/s" for t in alone["before"])
        + " |",
        f"| CPU per film: the node process (all its work) / the model alone on 1 thread | "
        f"{r['node_cpu_ms_per_film']:.1f} / {r['model_cpu_ms_per_film']:.1f} ms |",
        f"| node throughput / model alone (best, {r['model_alone_best_way']}: "
        f"{r['model_alone_best']:.0f} img/s) | {r['ratio']:.2f} |",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
