"""The most the screening node could reach against the model alone, given only the DICOM traffic it must do.

    python benchmarks/node_floor.py                  # 200 films of 224 px, the shipped default and its DAE
    python benchmarks/node_floor.py --films 50

Per film the node must take the film in by C-STORE (it is the SCP) and send its Structured Report out by C-STORE
(it is the SCU, with TCP_NODELAY as the node sets it; the film's sender is a plain pynetdicom SCU, as a modality
might be). This measures the CPU time pynetdicom itself spends on those two, with nothing of cxrad's around
them: a bare SCP in a child process counts the stores, a bare SCU in this process sends them, on loopback, on one
association each way. The films are those of `benchmarks/service_load.py` (224 px CR films made from the
kermany224 test JPEGs) and the reports are the node's own (`ReportMaker`). With the model's CPU per film on one
thread (`det.score_arrays`, preloaded arrays), the bound is model / (model + film in + report out): what the
node would reach if spooling, decoding, the database, heatmaps and HTTP cost nothing. Writes OUT/node_floor.md.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CXRAD_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "tests"))  # the films of the node's tests
from common import git_commit, time_model_alone, write_report  # noqa: E402  (benchmarks/common.py)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bare_scp(expected: int, ready, result) -> None:
    """Accept ``expected`` C-STOREs (keeping each one's raw bytes, as the node spools them); report the CPU
    seconds from the first store to the last."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    state = {"n": 0, "t0": None}

    def on_store(event):
        if state["t0"] is None:
            state["t0"] = cpu_s()
        event.request.DataSet.getvalue()
        state["n"] += 1
        return 0x0000
    ae = AE(ae_title="FLOOR")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    ready.put(server.server_address[1])
    while state["n"] < expected:
        time.sleep(0.01)
    result.put(cpu_s() - state["t0"])
    server.shutdown()


def send_all(datasets, port: int, handlers=()) -> tuple[float, float]:
    """(CPU, wall) seconds this process spends sending ``datasets`` by C-STORE on one association (after the
    first)."""
    from pynetdicom import AE
    ae = AE(ae_title="SCU")
    for ds in datasets[:1]:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="FLOOR", evt_handlers=list(handlers))
    assert assoc.is_established, "the bare SCP refused the association"
    assoc.send_c_store(datasets[0])  # the first store warms both sides up: not counted
    t0, w0 = cpu_s(), time.perf_counter()
    for ds in datasets[1:]:
        status = assoc.send_c_store(ds)
        assert status.Status == 0, f"C-STORE failed: {status}"
    spent, wall = cpu_s() - t0, time.perf_counter() - w0
    assoc.release()
    return spent, wall


def traffic(datasets, handlers=()) -> tuple[float, float, float]:
    """(SCP, SCU) CPU milliseconds per C-STORE of these datasets, and the wall milliseconds each store took."""
    ctx = mp.get_context("spawn")
    ready, result = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=bare_scp, args=(len(datasets), ready, result))
    child.start()
    scu, wall = send_all(datasets, ready.get(timeout=60), handlers)
    # the SCP's clock starts at the first (warm-up) store, so it counts one store more
    scp = result.get(timeout=600)
    child.join(60)
    return 1000 * scp / len(datasets), 1000 * scu / (len(datasets) - 1), 1000 * wall / (len(datasets) - 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--films", type=int, default=200)
    ap.add_argument("--models", nargs="+", default=[None, "dae-cxr-64-300k"],
                    help="bundles or shipped names (default: the shipped default and dae-cxr-64-300k)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    from cxrad.bundles import default_name
    from cxrad.data import load_images
    from cxrad.detectors import load_detector
    from pynetdicom import evt

    from cxrad.serving.node.delivery import no_delay
    from cxrad.serving.node.instances import read_header
    from cxrad.serving.node.results import ReportMaker
    from dicom_films import encode, film_dataset

    jpegs = sorted(str(p) for p in (DATA / "kermany224" / "test").rglob("*.jpeg"))[:args.films]
    films = [film_dataset(Path(p), patient_id=f"FLOOR-{i}") for i, p in enumerate(jpegs)]
    maker = ReportMaker("floor", "ab" * 32, components=("box_residual", "top_residual"), threshold=0.05)
    reports = []
    for ds in films:
        _, sr = maker.structured_report(read_header(encode(ds)).dataset, "normal", {"score": 0.04, "percentile": 50.0,
                                        "box_residual": 0.04, "top_residual": 0.1})
        reports.append(dcmread(DicomBytesIO(sr)))
    film_in, _, film_wall = traffic(films)        # the node is the SCP of the film
    # and the SCU of its report, with the node's own socket option (TCP_NODELAY)
    _, report_out, report_wall = traffic(reports, [(evt.EVT_CONN_OPEN, no_delay)])
    rows = []
    for model in args.models:
        det = load_detector(model, device="cpu")
        arrays = np.asarray(load_images(jpegs, det.prep, workers=2).images)
        model_ms = time_model_alone(det, arrays, 1)["one batch at a time, 1 thread"]["cpu_ms"]
        name = model or f"{default_name()} (default)"
        rows.append({"model": name, "model_cpu_ms": model_ms,
                     "bound": model_ms / (model_ms + film_in + report_out)})
    report = {"films": len(films), "film_bytes": len(encode(films[0])), "report_bytes": len(encode(reports[0])),
              "film_in_scp_cpu_ms": film_in, "report_out_scu_cpu_ms": report_out,
              "film_store_wall_ms": film_wall, "report_store_wall_ms": report_wall, "models": rows,
              "command": "PYTHONPATH=src python benchmarks/node_floor.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average_1min": os.getloadavg()[0],
              "commit": git_commit(ROOT)}
    lines = ["# The node's floor: pynetdicom's own CPU per film against the model's", "",
             f"Written by `benchmarks/node_floor.py` on {report['date']} at commit {report['commit']} "
             f"(1-minute load average {report['load_average_1min']:.1f} at the end):", "",
             "```bash", report["command"], "```", "",
             f"{len(films)} CR films of 224 px ({report['film_bytes']:,} bytes each) in by C-STORE to a bare "
             f"pynetdicom SCP, and the node's {report['report_bytes']:,}-byte Structured Reports out by C-STORE "
             "from a bare SCU, on loopback, one association each way, each store sent as soon as the last was "
             "answered. pynetdicom's reactor threads poll every millisecond and its senders wait in 0.1 ms sleeps, so "
             "part of this CPU grows with the time a store takes (wall time per store in brackets):", "",
             "| what | CPU ms per film |", "|---|---|",
             f"| film in (pynetdicom SCP) | {film_in:.2f} [{film_wall:.1f} ms a store] |",
             f"| report out (pynetdicom SCU) | {report_out:.2f} [{report_wall:.1f} ms a store] |"]
    for r in rows:
        lines.append(f"| model alone, `{r['model']}`, 1 thread | {r['model_cpu_ms']:.2f} |")
    lines += ["", "The most the node can reach against the model alone, if everything else it does cost nothing: "
              "model / (model + film in + report out).", "", "| model | bound |", "|---|---|"]
    lines += [f"| `{r['model']}` | {r['bound']:.2f}x |" for r in rows]
    write_report(Path(args.out), "node_floor", report, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
