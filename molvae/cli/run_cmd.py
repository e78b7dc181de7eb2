"""`molvae run PIPELINE.toml [...]`: run TOML pipelines, then print a status table."""

from __future__ import annotations

import json
import os


def register(sub, bench) -> None:
    p = sub.add_parser("run", help="run one or more TOML pipelines (resumable)")
    p.add_argument("pipelines", nargs="+", help="pipeline TOML files")
    p.add_argument("--force", action="store_true", help="redo every stage from scratch")
    p.add_argument("--jobs", type=int, default=1, help="pipelines run in parallel (default: in turn)")
    p.add_argument("--check", action="store_true", help="only validate the files")
    p.add_argument("--allow-code", action="store_true",
                   help="let the pipelines' objectives run the module:function components they name "
                        "(a file alone may not run code; or list the modules in MOLVAE_ALLOW_CODE)")
    p.set_defaults(func=cmd_run)

    r = sub.add_parser("report", help="(re)build report.html for a run folder")
    r.add_argument("run_dir")
    r.add_argument("--out", default=None, help="default: RUN_DIR/report.html")
    r.add_argument("--top-n", type=int, default=24)
    r.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from ..report import report_from_run_dir

    print(report_from_run_dir(args.run_dir, out_path=args.out, top_n=args.top_n))
    return 0


def cmd_run(args) -> int:
    from ..pipeline import format_summary, load_pipeline, run_many

    if args.check:
        for path in args.pipelines:
            pipe = load_pipeline(path, allow_code=args.allow_code)
            print(f"{path}: ok (stages: {', '.join(pipe.stages())}; run folder {pipe.run_dir})")
        return 0
    quiet = os.environ.get("MOLVAE_QUIET") == "1"
    results = run_many(args.pipelines, force=args.force, jobs=args.jobs, progress=not quiet,
                       allow_code=args.allow_code)
    for r in results:
        if r.status != "ok":
            continue
        done = os.path.join(r.run_dir, "optimize", "DONE")
        if os.path.exists(done):
            info = json.loads(open(done).read())
            if info.get("prior_best") is not None:
                print(f"{r.name}: top-10 mean of optimized molecules {info['optimized_top10_mean']:.4f}, "
                      f"best {info['best']:.4f}; best of {info.get('oracle_calls', '?')} prior samples "
                      f"{info['prior_best']:.4f}")
        report = os.path.join(r.run_dir, "report.html")
        if os.path.exists(report):
            print(f"{r.name}: report {report}")
    print(format_summary(results))
    return 0 if all(r.status == "ok" for r in results) else 1
