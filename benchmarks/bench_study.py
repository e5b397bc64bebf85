"""Reader-study store and analysis at scale: 10 readers x 2 sessions x 500 cases by default.

    .venv/bin/python benchmarks/bench_study.py [--readers 10] [--cases 500] [--backend sqlite|postgresql|both]

Each read is what a front end does: next_case, open_read, record_rating (durable on return),
submit_read. Prints per-call latency (median, p95, max) for each backend, then the time of
`study analyze` (patient level with node-level clustered ROC, OR/DBM MRMC, kappa) on the result.
PostgreSQL runs on a throwaway local server (Unix socket, fsync on).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LLNAssistLib.readerstudy import Study, pgserver  # noqa: E402
from LLNAssistLib.readerstudy.analysis import analyze_study  # noqa: E402


class Clock:
    def __init__(self):
        self.t = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.timezone.utc)

    def __call__(self):
        return self.t


def run(location: str, n_readers: int, n_cases: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    clock = Clock()
    st = Study.create(location, "benchmark", seed=seed, clock=clock)
    cases = []
    for i in range(n_cases):
        pos = rng.random() < 0.35
        nodes = [{"node_id": f"N{k}", "status": "positive" if (pos and k == 0) else "negative",
                  "centroid_r": 50.0 + 20 * k, "centroid_a": 5.0, "centroid_s": -30.0} for k in range(2)]
        cases.append({"case_id": f"C{i:04d}", "truth": int(pos), "truth_nodes": nodes,
                      "ai": {"probability": float(np.clip(0.5 + (0.3 if pos else -0.3) + rng.normal(0, 0.2), 0, 1)),
                             "status": "positive" if pos else "negative"}})
    st.add_cases(cases)
    truth = {c["case_id"]: c["truth_nodes"] for c in cases}
    for r in range(n_readers):
        st.add_reader(f"R{r:02d}", f"Reader {r}", 2 + r)
    lat = {"next_case": [], "open_read": [], "record_rating": [], "submit_read": []}

    def timed(name, fn, *a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        lat[name].append(time.perf_counter() - t0)
        return out

    for session in (1, 2):
        if session == 2:
            clock.t += dt.timedelta(days=29)
        for r in range(n_readers):
            reader = f"R{r:02d}"
            while (nxt := timed("next_case", st.next_case, reader, session)) is not None:
                c = nxt["case_id"]
                timed("open_read", st.open_read, reader, session, c)
                sep = 1.6 if nxt["modality"] == "aided" else 1.0
                for k, node in enumerate(truth[c]):
                    t = node["status"] == "positive"
                    score = int(np.clip(np.round(2.5 + sep * t + rng.normal(0, 0.9)), 1, 5))
                    timed("record_rating", st.record_rating, reader=reader, session=session, case=c, rating=score,
                          call=score >= 4, point=(node["centroid_r"], 5.0, -30.0), most_suspicious=(k == 0))
                clock.t += dt.timedelta(seconds=40)
                timed("submit_read", st.submit_read, reader, session, c)
    t0 = time.perf_counter()
    res, _ = analyze_study(st)
    t_analysis = time.perf_counter() - t0
    st.close()
    return {"latency": lat, "analysis_s": t_analysis, "n_ratings": len(lat["record_rating"]),
            "mean_auc": {m: v["mean_auc"] for m, v in res["modalities"].items()}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--readers", type=int, default=10)
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    a = ap.parse_args()
    results = {}
    if a.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            results["sqlite"] = run(os.path.join(d, "bench.sqlite"), a.readers, a.cases)
            results["sqlite"]["total_s"] = time.perf_counter() - t0
    if a.backend in ("postgresql", "both"):
        with pgserver.temporary_server() as server:
            t0 = time.perf_counter()
            results["postgresql"] = run(pgserver.new_database(server), a.readers, a.cases)
            results["postgresql"]["total_s"] = time.perf_counter() - t0
    print(f"reader study: {a.readers} readers x 2 sessions x {a.cases} cases, 2 rated nodes per read "
          f"({os.cpu_count()} CPUs)")
    print(f"{'backend':<11}{'call':<15}{'n':>7}{'median ms':>11}{'p95 ms':>9}{'max ms':>9}")
    for b, r in results.items():
        for name, xs in r["latency"].items():
            x = np.array(xs) * 1000
            print(f"{b:<11}{name:<15}{len(x):>7}{np.median(x):>11.2f}{np.percentile(x, 95):>9.2f}{x.max():>9.1f}")
    print(f"{'backend':<11}{'ratings':>8}{'whole study s':>15}{'analysis s':>12}  mean AUC")
    for b, r in results.items():
        aucs = ", ".join(f"{m} {v:.3f}" for m, v in r["mean_auc"].items())
        print(f"{b:<11}{r['n_ratings']:>8}{r['total_s']:>15.1f}{r['analysis_s']:>12.2f}  {aucs}")


if __name__ == "__main__":
    main()
