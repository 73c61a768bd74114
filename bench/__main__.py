"""``python -m bench``: how fast faceq is, from the bare model to a real job, as one JSON document.

For each network: ``bare_model_ips`` (forward at the best batch, inputs on the device: the
ceiling), ``engine_ips`` (uint8 crops in host memory through the engine and micro-batcher),
``e2e_ips`` (a real job through Redis, a worker process and storage, file:// and S3 via
moto, from 112×112 JPEG crops to Parquet rows), ``per_image_ips`` / ``microbatch_ips``
(one-image jobs with cross-task batching off / on), a batch-size sweep with p50/p95 batch
latency, worker CPU utilisation and warm GPU memory; ratios against the ceiling; and 1:N
identification probes/s against 10,000- and 100,000-identity galleries.
``--record`` appends the tables to bench/RESULTS.md.

``pipeline`` (issue 11, ``bench/datapath.py``): images/s and worker CPU per item by stage
through a real worker running the zero-cost stand-in (crop mode on file:// and S3, one core
and two, detect mode on 1920×2400 photos) beside a plain torch DataLoader over the same
folder; ``--quick-pipeline`` for a small one, ``--skip-pipeline`` for none, and
``python -m bench pipeline [--quick]`` for that section alone.

``python -m bench gpu [--device cuda:0] [--quick]``: the unattended smoke of a GPU host (one
crop job and one detect job through a real worker; exits non-zero when a job fails or stalls);
see ``bench/gpu.py``.

``python -m bench recall``: faces found by the full search and by the coarse pass of
coarse-to-fine detect, by face size (how its coarse scale is chosen); see ``bench/recall.py``.

``python -m bench scale --items N [--items N ...]``: what a job costs as it grows (producer
time and memory, Redis bytes, manifest bytes, end-to-end items/s with the zero-cost model
stand-in, finalize time and memory); see ``bench/scale.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench import record

CPU_DEFAULTS = {"ir_se_64": {"batches": [1, 8, 32], "images": 96, "jobs": 0},
                "ir_se_tiny": {"batches": [1, 8, 32, 128], "images": 512, "jobs": 200}}
GPU_DEFAULTS = {"ir_se_64": {"batches": [1, 8, 32, 64, 128, 256, 512], "images": 20000, "jobs": 2000},
                "ir_se_tiny": {"batches": [1, 8, 32, 128, 512], "images": 20000, "jobs": 2000}}


def measure_arch(arch: str, args, workdir: Path, s3_endpoint: str | None, base_env: dict[str, str]) -> dict:
    from bench import model_speed, pipeline

    defaults = (GPU_DEFAULTS if args.device.startswith("cuda") else CPU_DEFAULTS)[arch]
    batches = args.batch_sizes or defaults["batches"]
    result = model_speed.bare_model(arch, args.device, args.precision, batches, args.min_seconds)
    batch = result["best_batch"]
    result |= model_speed.engine_speed(arch, args.device, args.precision, batch, n_images=max(2 * batch, 64))
    if args.skip_e2e:
        return result
    images = args.images or defaults["images"]
    e2e = {"file": pipeline.e2e(base_env, workdir, (workdir / f"store-{arch}").as_uri(), None, arch, args.device,
                                args.precision, batch, images, args.timeout)}
    if s3_endpoint:
        e2e["s3"] = pipeline.e2e(base_env, workdir, f"s3://faceq-bench/{arch}", s3_endpoint, arch, args.device,
                                 args.precision, batch, images, args.timeout)
    result["e2e"] = e2e
    result["e2e_ips"] = {kind: row["ips"] for kind, row in e2e.items()}
    jobs = args.jobs if args.jobs is not None else defaults["jobs"]
    if jobs:
        # One-image jobs give the batcher single crops to combine: let it form the largest
        # batch of the sweep (without it every batch has one image, whatever the limit).
        room = max(batches)
        for microbatch, key in ((False, "per_image"), (True, "microbatch")):
            result[key] = pipeline.one_image_jobs(base_env, workdir / key, arch, args.device, args.precision, room,
                                                  jobs, microbatch, args.concurrency, args.timeout)
            result[f"{key}_ips"] = result[key]["ips"]
    bare_at_batch = next(row["ips"] for row in result["batch_sweep"] if row["batch"] == batch)
    result["ratios"] = {"engine_over_bare": round(result["engine_ips"] / bare_at_batch, 3)}
    for kind, ips in result["e2e_ips"].items():
        result["ratios"][f"e2e_{kind}_over_bare"] = round(ips / bare_at_batch, 3)
    if jobs:
        result["ratios"]["microbatch_over_per_image"] = round(result["microbatch_ips"] / result["per_image_ips"], 3)
    return result


def as_tables(document: dict) -> str:
    lines = []
    for arch, r in document["results"].items():
        lines += [f"**{arch}** on {document['device']} {document['precision']} (best batch {r['best_batch']}):", "",
                  "| metric | images/s |", "| --- | --- |", f"| bare_model_ips | {r['bare_model_ips']} |",
                  f"| engine_ips | {r['engine_ips']} |"]
        for kind, ips in r.get("e2e_ips", {}).items():
            lines.append(f"| e2e_ips ({kind}) | {ips} (worker CPU {r['e2e'][kind]['worker_cpu_percent']} %) |")
        for key in ("per_image", "microbatch"):
            if key in r:
                lines.append(f"| {key}_ips ({r[key]['jobs']} one-image jobs, {r[key]['concurrency']} task threads) "
                             f"| {r[key]['ips']} |")
        lines += ["", "Ratios: " + ", ".join(f"{k} = {v}" for k, v in r.get("ratios", {}).items()), "",
                  "| batch | images/s | p50 ms | p95 ms |", "| --- | --- | --- | --- |"]
        lines += [f"| {row['batch']} | {row['ips']} | {row['latency_ms_p50']} | {row['latency_ms_p95']} |"
                  for row in r["batch_sweep"]]
        if r.get("warm_memory_bytes"):
            lines.append(f"\nWarm GPU memory: {r['warm_memory_bytes'] / 2**20:.0f} MiB")
        lines.append("")
    if document.get("one_to_n"):
        lines += ["**1:N identification** (top-5 of similarity × quality, 256 probes per matrix product):", "",
                  "| identities | probes | probes/s | gallery load s | loads |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['identities']} | {r['probes']} | {r['probes_per_second']} | {r['gallery_load_seconds']} | "
                  f"{r['gallery_loads']} |" for r in document["one_to_n"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["scale"]:
        from bench import scale

        sys.exit(scale.main(sys.argv[2:]))
    if sys.argv[1:2] == ["gpu"]:
        from bench import gpu

        sys.exit(gpu.main(sys.argv[2:]))
    if sys.argv[1:2] == ["recall"]:
        from bench import recall

        sys.exit(recall.main(sys.argv[2:]))
    if sys.argv[1:2] == ["pipeline"]:
        from bench import datapath

        sys.exit(datapath.main(sys.argv[2:]))
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--arch", action="append", help="ir_se_64 and/or ir_se_tiny (default: both)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--images", type=int, help="images in the end-to-end job")
    parser.add_argument("--jobs", type=int, help="one-image jobs for per_image/microbatch (0: skip)")
    parser.add_argument("--concurrency", type=int, default=8, help="task threads for the one-image jobs")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timing window per batch size")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--skip-e2e", action="store_true", help="only the in-process figures")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) end-to-end run")
    parser.add_argument("--one-to-n", default="10000,100000", help="gallery sizes for 1:N ('' to skip)")
    parser.add_argument("--probes", type=int, default=10000, help="probes per 1:N measurement")
    parser.add_argument("--skip-pipeline", action="store_true", help="no data-path (issue 11) section")
    parser.add_argument("--quick-pipeline", action="store_true", help="a small data-path section (for tests)")
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args()

    from devstack.processes import RedisServer

    with tempfile.TemporaryDirectory(prefix="faceq-bench-") as tmp:
        workdir = Path(tmp)
        redis_server = RedisServer(workdir / "redis").start()
        os.environ["FACEQ_BROKER_URL"] = redis_server.url  # before faceq.workers.app is first used
        moto = None
        try:
            from bench.pipeline import python_env, start_moto

            base_env = python_env() | {"FACEQ_BROKER_URL": redis_server.url}
            s3_endpoint = None
            if not (args.skip_e2e or args.no_s3):
                moto, s3_endpoint = start_moto(base_env)
            results = {arch: measure_arch(arch, args, workdir, s3_endpoint, base_env)
                       for arch in (args.arch or ["ir_se_64", "ir_se_tiny"])}
            from bench.one_to_n import one_to_n

            sizes = [int(n) for n in args.one_to_n.split(",") if n]
            identification = [one_to_n(args.device, n, args.probes) for n in sizes]
            pipeline_section = None
            if not args.skip_pipeline:
                from bench import datapath

                pipeline_section = datapath.run(base_env, workdir, s3_endpoint, args.quick_pipeline, args.timeout)
        finally:
            if moto is not None:
                moto.stop()
            redis_server.stop()
    document = {"benchmark": "faceq", "device": args.device, "precision": args.precision, "results": results,
                "one_to_n": identification, "pipeline": pipeline_section, "machine": record.machine(),
                "commit": record.commit()}
    print(json.dumps(document, indent=2))
    if args.record:
        record.append("Throughput (`python -m bench`)", as_tables(document), document)
        if pipeline_section:
            from bench import datapath

            record.append("Data path (`python -m bench`, pipeline section)", datapath.as_table(pipeline_section),
                          document)


if __name__ == "__main__":
    main()
