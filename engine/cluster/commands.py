"""The cluster's commands beside `index --cluster`: `bench-scale` (an archive of millions, simulated)."""

from __future__ import annotations

import json
import sys


def add_parsers(sub, common, positive_int) -> None:
    p = sub.add_parser("bench-scale", parents=[common],
                       help="simulate an archive of millions of photos through the merge and index path")
    p.add_argument("work", help="an empty folder for the simulated library (about 1.6 KB a photo on disk)")
    p.add_argument("--photos", type=positive_int, default=10_000_000, help="archive size (default 10,000,000)")
    p.add_argument("--dim", type=positive_int, default=256, help="vector width (default 256, BLIP's BE)")
    p.add_argument("--shard-photos", type=positive_int, default=250_000, help="photos a shard (default 250,000)")
    p.add_argument("--queries", type=positive_int, default=1000, help="text-like queries measured (default 1000)")
    p.add_argument("--ondisk-limit", type=positive_int,
                   help="photos past which the index goes on disk (default the library's, 1,000,000)")
    p.add_argument("--seed", type=int, default=0)


def cmd_bench_scale(s) -> int:
    from tqdm import tqdm

    from ..errors import PicsiftError
    from ..machine import describe_cpu, matmul_gflops
    from .scale import ScaleOptions, run_scale

    a = s.args
    o = ScaleOptions(a.work, photos=a.photos, dim=a.dim, shard_photos=a.shard_photos, queries=a.queries,
                     seed=a.seed, ondisk_limit=a.ondisk_limit)
    gflops = matmul_gflops()
    bar = None
    result = None
    try:
        for ev in run_scale(o):
            if a.quiet:
                pass
            elif ev.phase == "merge":
                if bar is None:
                    bar = tqdm(total=ev.total, unit="photo", desc="Merging shards", file=sys.stderr)
                bar.update(ev.done - bar.n)
            else:
                if bar is not None:
                    bar.close()
                    bar = None
                print(ev.message, file=sys.stderr)
            if ev.result is not None:
                result = ev.result
    except (ValueError, RuntimeError, OSError) as exc:
        raise PicsiftError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    result["machine"] = {"cpu": describe_cpu(), "matmul_gflops_fp32": round(gflops, 1)}
    if a.json:
        print(json.dumps(result))
        return 0
    ix = result["index"]
    print(f"{result['photos']:,} vectors of {result['dim']} floats; machine: {describe_cpu()}, "
          f"matmul {gflops:.0f} GFLOP/s fp32")
    print(f"merge: {result['merge_s']:,.0f} s ({result['merge_photos_per_s']:,} photos/s), "
          f"peak {result['merge_peak_mb']:,.0f} MB")
    print(f"index: {ix['factory']}, nprobe {ix['nprobe']}, built in {result['build_s']:,.0f} s, "
          f"peak {result['build_peak_mb']:,.0f} MB")
    print("on disk: " + ", ".join(f"{k} {v / 1e6:,.1f} MB" for k, v in result["index_bytes"].items())
          + f"; database {result['database_bytes'] / 1e9:,.2f} GB")
    print(f"search (fresh process): opened in {result['open_s']} s, {result['query_ms_median']} ms a query "
          f"(p95 {result['query_ms_p95']}), peak {result['search_peak_mb']:,.0f} MB, "
          f"recall@20 {result['recall_at_20']:.3f} against exact search ({result['queries']} queries)")
    return 0


COMMANDS = {"bench-scale": cmd_bench_scale}
