"""The `latentfit` command: the MLflow UI on this project's runs, sweeps of the pipeline on Ray and their
seed statistics, and paired gaps between fits of different runs.

    latentfit ui [--port 5000] [--print-url]
    latentfit compare VAE=metrics/fits/vae@main IWAE-64=metrics/fits/vae@iwae64 direct=metrics/fits/direct
    latentfit sweep -S model.z_dim=2,5,20 -S fits.direct.mc_samples=16,64,256 --seeds 0-4 --name zgrid
    latentfit sweep summary zgrid
"""

from __future__ import annotations

import argparse
import sys

from latentfit.core.errors import LatentfitError


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-S", "--set-param", dest="sets", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a param and its values, as in `dvc exp run -S` (several -S make a grid; one value sets it "
                        "for every run; range(a,b[,step]) as in Hydra)")
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0-4 or 0,1,2 (sets "
                                                "every fits.<fit>.seed, evaluate.seed, visualize.seed)")
    p.add_argument("-n", "--name", help="the sweep's name (required); its runs are named NAME-<point>-seed=<s>")
    p.add_argument("--address", help="join a running Ray cluster (ray start --head ...); default: a local Ray "
                                     "instance sized to this machine")
    p.add_argument("--git-remote", help="a git remote every node can reach (name or URL): runs clone from it and "
                                        "push their experiments there; needs a DVC remote for the outputs")
    p.add_argument("--dvc-remote", help="the DVC remote runs exchange outputs and the run cache through "
                                        "(default: the repository's default remote)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs Ray reserves for one run (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=None,
                   help="GPUs Ray reserves for one run (default: 1 where the cluster has GPUs, else 0); a fraction "
                        "such as 0.25 lets runs share a GPU")
    p.add_argument("--max-retries", type=int, default=2, help="times Ray re-runs a run whose worker or node died")
    p.add_argument("--workdir", help="where runs clone the repository on each node (default: its temp dir)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def build_parser() -> argparse.ArgumentParser:
    """`latentfit` and its subcommands (argparse subparsers: each says its own --help)."""
    about, examples = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(prog="latentfit", description=about.replace("\n", " "),
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=examples)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{ui,sweep,compare}")
    ui = commands.add_parser("ui", help="the MLflow UI on this project's runs",
                             description="Start the MLflow UI on this project's tracking store (MLFLOW_TRACKING_URI, "
                                         "else mlflow.db here), print the link to its runs table once it answers, "
                                         "and stop it and its workers on Ctrl-C or SIGTERM.")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--print-url", action="store_true", help="print the link and exit")
    ui.set_defaults(run=_ui)
    sweep = commands.add_parser(
        "sweep", help="the pipeline over a grid of params and seeds, on Ray",
        description="Run the pipeline for every point of a grid and every seed, each a DVC experiment run as a Ray "
                    "task, with the committed code and params of HEAD plus the point's overrides. Runs that landed "
                    "already are skipped, so the same command resumes a sweep. `latentfit sweep summary NAME` "
                    "writes the seed statistics again.")
    _sweep_arguments(sweep)
    sweep.set_defaults(run=_sweep, parser=sweep)
    actions = sweep.add_subparsers(dest="action", metavar="{summary}")
    summary = actions.add_parser("summary", help="seed statistics of a sweep's landed runs: metrics/sweeps/NAME/",
                                 description="Seed statistics of a sweep's landed runs: metrics/sweeps/NAME/")
    summary.add_argument("summary_name", metavar="NAME")
    summary.set_defaults(run=_summary)
    compare = commands.add_parser(
        "compare", help="paired gaps between fits of different runs, from their per-image results",
        description="Each fit against the first, per estimator (AIS, IWAE, prior sampling), paired over the test "
                    "images both scored: from each fit's metrics/fits/<fit>/images.csv, so nothing is evaluated again; "
                    "DIR@REV reads it as a commit, branch, tag or experiment (`dvc exp show`) has it.")
    compare.add_argument("fits", nargs="+", metavar="NAME=DIR", help="a name for the fit and its metrics/fits/<fit>/ "
                                                                     "directory (or images.csv), @REV for another "
                                                                     "revision's; the first is the baseline")
    compare.add_argument("--csv", help="also write the table as CSV here")
    compare.set_defaults(run=_compare)
    return parser


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentfit.evaluation.across import markdown, paired_gaps, read_images

    named = {}
    for item in args.fits:
        name, sep, where = item.partition("=")
        path, at, rev = where.rpartition("@") if "@" in where and not Path(where).exists() else (where, "", "")
        if not sep or not name or not path or (at and not rev):
            raise LatentfitError(f"{item!r} is not NAME=DIR or NAME=DIR@REV: name each fit, e.g. vae=metrics/fits/vae "
                                 "or iwae=metrics/fits/vae@iwae64")
        named[name] = read_images(path, rev or None)
    gaps = paired_gaps(named)
    if args.csv:
        from latentfit.core.io import write_csv

        write_csv(args.csv, gaps.to_dict("records"))
    print(markdown(gaps))
    return 0


def _summary(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentfit.sweep.mlflow_runs import find_parent
    from latentfit.sweep.repo import find_repo
    from latentfit.sweep.summary import summarize

    repo = find_repo()
    parent, uri = find_parent(repo, args.summary_name)
    written = summarize(repo, args.summary_name, parent_run=parent, tracking_uri=uri)
    print("\n".join(str(Path(f).relative_to(repo)) for f in written))
    print((repo / "metrics" / "sweeps" / args.summary_name / "summary.md").read_text())
    return 0


def _sweep(args: argparse.Namespace) -> int:
    if not args.name:
        args.parser.error("the following arguments are required: -n/--name")
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise LatentfitError("latentfit sweep runs on Ray, which is not installed here: pip install -e '.[sweep]'")
    from latentfit.sweep.driver import Options, sweep
    from latentfit.sweep.grid import parse_seeds

    options = Options(name=args.name, sets=args.sets, seeds=parse_seeds(args.seeds), address=args.address,
                      git_remote=args.git_remote, dvc_remote=args.dvc_remote, cpus_per_run=args.cpus_per_run,
                      gpus_per_run=args.gpus_per_run, max_retries=args.max_retries, workdir=args.workdir,
                      dry_run=args.dry_run)
    sweep(options, progress=not args.no_progress)
    return 0


def _ui(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentfit.ui import find_project, runs_url, serve

    repo = find_project(Path.cwd())
    if args.print_url:
        print(runs_url(repo, args.host, args.port)[0])
        return 0
    return serve(repo, args.host, args.port)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.run(args))
    except LatentfitError as err:
        print(f"latentfit {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
