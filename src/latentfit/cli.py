"""The `latentfit` command: the MLflow UI on this project's runs, sweeps of the pipeline on Ray, and their
seed statistics.

    latentfit ui [--port 5000] [--print-url]
    latentfit sweep -S model.z_dim=2,5,20 -S train_direct.mc_samples=16,64,256 --seeds 0-4 --name zgrid
    latentfit sweep summary zgrid
"""

from __future__ import annotations

import argparse
import sys

from .errors import LatentfitError


def _sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentfit sweep",
        description="Run the pipeline for every point of a grid and every seed, each a DVC experiment run as a Ray "
                    "task, with the committed code and params of HEAD plus the point's overrides. Runs that landed "
                    "already are skipped, so the same command resumes a sweep. `latentfit sweep summary NAME` "
                    "writes the seed statistics again.")
    p.add_argument("-S", "--set-param", dest="sets", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a param and its values, as in `dvc exp run -S` (several -S make a grid; one value sets it "
                        "for every run; range(a,b[,step]) as in Hydra)")
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0-4 or 0,1,2 (sets "
                                                "train_vae.seed, train_direct.seed, evaluate.seed, visualize.seed)")
    p.add_argument("-n", "--name", required=True, help="the sweep's name; its runs are named NAME-<point>-seed=<s>")
    p.add_argument("--address", help="join a running Ray cluster (ray start --head ...); default: a local Ray "
                                     "instance sized to this machine")
    p.add_argument("--git-remote", help="a git remote every node can reach (name or URL): runs clone from it and "
                                        "push their experiments there; needs a DVC remote for the outputs")
    p.add_argument("--dvc-remote", help="the DVC remote runs exchange outputs and the run cache through "
                                        "(default: the repository's default remote)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs Ray reserves for one run (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0.0,
                   help="GPUs Ray reserves for one run; a fraction such as 0.25 lets runs share a GPU")
    p.add_argument("--max-retries", type=int, default=2, help="times Ray re-runs a run whose worker or node died")
    p.add_argument("--workdir", help="where runs clone the repository on each node (default: its temp dir)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    return p


def sweep_main(argv: list[str]) -> int:
    from pathlib import Path

    if argv[:1] == ["summary"]:
        p = argparse.ArgumentParser(prog="latentfit sweep summary",
                                    description="Seed statistics of a sweep's landed runs: metrics/sweeps/NAME/")
        p.add_argument("name")
        args = p.parse_args(argv[1:])
        from .sweep.mlflow_runs import find_parent
        from .sweep.repo import find_repo
        from .sweep.summary import summarize

        repo = find_repo()
        parent, uri = find_parent(repo, args.name)
        written = summarize(repo, args.name, parent_run=parent, tracking_uri=uri)
        print("\n".join(str(Path(f).relative_to(repo)) for f in written))
        print((repo / "metrics" / "sweeps" / args.name / "summary.md").read_text())
        return 0
    args = _sweep_parser().parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise LatentfitError("latentfit sweep runs on Ray, which is not installed here: pip install -e '.[sweep]'")
    from .sweep.driver import Options, sweep
    from .sweep.grid import parse_seeds

    options = Options(name=args.name, sets=args.sets, seeds=parse_seeds(args.seeds), address=args.address,
                      git_remote=args.git_remote, dvc_remote=args.dvc_remote, cpus_per_run=args.cpus_per_run,
                      gpus_per_run=args.gpus_per_run, max_retries=args.max_retries, workdir=args.workdir,
                      dry_run=args.dry_run)
    sweep(options, progress=not args.no_progress)
    return 0


def ui_main(argv: list[str]) -> int:
    from pathlib import Path

    p = argparse.ArgumentParser(prog="latentfit ui", description="Start the MLflow UI on this project's tracking "
                                "store (MLFLOW_TRACKING_URI, else mlflow.db here) and print the link that opens "
                                "its runs table.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--print-url", action="store_true", help="print the link and exit")
    args = p.parse_args(argv)
    from .ui import find_project, runs_url, serve

    repo = find_project(Path.cwd())
    if args.print_url:
        print(runs_url(repo, args.host, args.port)[0])
        return 0
    return serve(repo, args.host, args.port)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    commands = {"sweep": sweep_main, "ui": ui_main}
    if command not in commands:
        print(f"latentfit: unknown command {command!r}; try: latentfit ui --help, latentfit sweep --help",
              file=sys.stderr)
        return 2
    try:
        return commands[command](rest)
    except LatentfitError as err:
        print(f"latentfit {command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
