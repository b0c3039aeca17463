"""The ``dig2dig`` command line.  Heavy modules (torch, OpenCV) load only inside commands, so
``dig2dig --help`` starts instantly."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ._version import __version__
from .registration import MODES as REGISTER_MODES
from .seeds import SEED_LIMIT

if TYPE_CHECKING:
    from .options import Options

TASK_CHOICES = ("auto", "vif", "mif", "mef", "mff")


def _add_prior_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prior",
        metavar="PATH",
        help="diffusion prior: a guided-diffusion .pt/.safetensors checkpoint, "
        "a diffusers UNet2DModel folder or a dig2dig prior folder (default: the embedded prior)",
    )
    p.add_argument(
        "--prior-config",
        metavar="FILE",
        help="architecture spec for a guided-diffusion checkpoint "
        "(JSON/YAML create_model flags); by default read from a file beside the checkpoint",
    )
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")


_ARG_TYPES = {"int": int, "float": float, "str": str, "any": str}


def _option_records() -> list[tuple[str, str, type[Options]]]:
    """(group title, description, record) for every option record the fusing commands expose."""
    from .methods import METHODS
    from .options import PriorOptions

    return [(f"{m.name} options", f"(--method {m.name}; see docs/options.md)", m.options) for m in METHODS.values()] + [
        ("prior options", "(any diffusion method: how the prior's network runs)", PriorOptions)
    ]


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """One flag per method option and prior option, derived from the option records (:mod:`dig2dig.options`)."""
    seen: dict[str, str] = {}
    for title, description, record in _option_records():
        infos = [i for i in record.infos() if i.cli]
        if not infos:
            continue
        group = p.add_argument_group(title, description)
        for i in infos:
            if i.name in seen:  # one flag for an option name that several methods share
                continue
            seen[i.name] = title
            extra = f"; {i.range_text()}" if i.kind in ("int", "float") and i.range_text() else ""
            help_text = f"{i.help} (default: {i.default_text()}{extra})".replace("%", "%%")  # argparse formats it
            kw: dict = {"dest": i.name, "default": None, "help": help_text}
            if i.kind == "bool":
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw.update(type=_ARG_TYPES[i.kind], metavar=i.metavar or i.name.upper())
                if i.choices:
                    kw.update(choices=i.choices, metavar=None)
            group.add_argument(i.flag, **kw)


def method_options_from_args(args: argparse.Namespace) -> dict:
    """The method and prior options given on the command line (flags left out are not passed)."""
    names = {i.name for _, _, record in _option_records() for i in record.infos() if i.cli}
    return {k: getattr(args, k) for k in sorted(names) if getattr(args, k, None) is not None}


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """What every fusing command shares: method, steps, seed, task, prior, device, resize."""
    from .methods import METHODS

    diffusion = ", ".join(n for n, m in METHODS.items() if m.needs_prior and n != "dig2dig")
    classical = ", ".join(n for n, m in METHODS.items() if not m.needs_prior)
    p.add_argument(
        "--method",
        default="dig2dig",
        help=f"fusion method: dig2dig (default), {diffusion}; classical baselines: {classical}",
    )
    p.add_argument(
        "--steps", help="reverse steps: a count (method default if omitted), 'power:N:P' or a list '999,500,0'"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    p.add_argument(
        "--task", default="auto", choices=TASK_CHOICES, help="fusion task (default: detect from names/channels)"
    )
    _add_prior_args(p)
    p.add_argument("--resize", action="store_true", help="resample sources of other sizes to the first source's size")
    p.add_argument(
        "--register",
        default="off",
        choices=REGISTER_MODES,
        help="align every source to the first before fusing (sources may then differ in size; the output has "
        "the first one's size): rigid (rotation, shift), affine (also scale, shear), homography (also tilt); "
        "default off",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=None,
        metavar="N",
        help="refuse source images larger than N pixels, read from the file header before decoding (default 200000000)",
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors as one line, ``dig2dig: error: <what>; see <command> --help`` (exit 2)."""

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        prog = self.prog
        if message.startswith("unrecognized arguments: "):  # a mistyped flag: name the closest known one
            import difflib

            parser = self._command_parser()
            known = [o for a in parser._actions for o in a.option_strings]
            for token in message.split(": ", 1)[1].split():
                flag = token.split("=", 1)[0]
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6) if flag.startswith("--") else []
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
            prog = parser.prog
        self.exit(2, f"dig2dig: error: {message}; see '{prog} --help'\n")

    def _command_parser(self) -> argparse.ArgumentParser:
        """The (sub)command parser the saved arguments select (``dig2dig prior info`` -> its parser)."""
        parser: argparse.ArgumentParser = self
        for token in getattr(self, "_argv", []):
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if subs and token in subs[0].choices:
                parser = subs[0].choices[token]
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dig2dig",
        description="Training-free, diffusion-based image fusion (Dig2DIG, DDFM, CCF).",
    )
    parser.add_argument("--version", action="version", version=f"dig2dig {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    f = sub.add_parser(
        "fuse",
        help="fuse two or more registered images of one scene",
        description="Fuse registered source images (visible+infrared, MRI+CT/PET/SPECT, "
        "exposure or focus stacks) into one image of the same size.",
    )
    f.add_argument("sources", nargs="+", metavar="SOURCE", help="source images (PNG, JPEG, TIFF, BMP; 8/16-bit)")
    f.add_argument("-o", "--output", required=True, metavar="FILE", help="fused image to write (.png/.jpg/.tif/.bmp)")
    _add_run_args(f)
    f.add_argument(
        "--bit-depth",
        type=int,
        choices=(8, 16),
        help="output bit depth (default: 16 if any source is 16-bit and the format allows, else 8)",
    )
    _add_method_options(f)
    f.add_argument(
        "--save-dig", metavar="DIR", help="dig2dig: write the weight maps per refresh and cumulative-DIG curves"
    )
    f.add_argument(
        "--dig-region",
        action="append",
        metavar="NAME=X0,Y0,X1,Y1",
        help="with --save-dig: a region "
        "(box in pixels) to plot DIG curves over; repeatable (default: where each source has structure)",
    )
    f.add_argument("--save-selection", metavar="DIR", help="ccf: write the per-step condition selection plot and JSON")
    f.add_argument("--report", metavar="FILE", help="also write the run's config and timings as JSON")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    f.set_defaults(func=cmd_fuse)

    b = sub.add_parser(
        "batch",
        help="fuse a whole collection (resumable, shardable, local or Ray)",
        description="Fuse every item of a dataset folder (<pair_id>/<role>.<ext>), a manifest "
        "(.csv/.jsonl: id and source paths; optional task, seed, output) or glob patterns "
        "matched by file stem ('ir/*.png' 'vis/*.png'). Each item gets <id>.png and a JSON "
        "sidecar in OUT_DIR; rerunning the command skips finished items. Item seeds derive "
        "from --seed and the item id, so an item gives the same bytes however it is run.",
    )
    b.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="a dataset folder, a manifest, or two or more glob patterns"
    )
    b.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder (created if missing)")
    _add_run_args(b)
    b.add_argument("--format", default="png", choices=("png", "tif", "jpg", "bmp"), help="output format (default png)")
    b.add_argument(
        "--bit-depth",
        type=int,
        choices=(8, 16),
        help="output bit depth (default: 16 if any source is 16-bit and the format allows, else 8)",
    )
    _add_method_options(b)
    b.add_argument(
        "--shard",
        metavar="I/N",
        help="run shard I of N (item k of the sorted ids belongs to shard k mod N; "
        "default from RANK/WORLD_SIZE or the SLURM array, else 0/1)",
    )
    b.add_argument("--executor", default="local", choices=("local", "ray"), help="local (default) or ray")
    b.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="local: worker processes; ray: actors (default: 1 local; ray: sized to the cluster)",
    )
    b.add_argument(
        "--threads",
        type=_positive_int,
        help="torch threads per worker (default: the CPUs divided among "
        "the local workers; 1 per Ray actor); on a CPU the output bytes depend on it, so it is part of each "
        "item's configuration",
    )
    b.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="join a running Ray cluster (e.g. 10.0.0.1:6379 or auto); default: start a local one",
    )
    b.add_argument(
        "--overwrite",
        action="store_true",
        help="redo items that were fused with other settings (default: refuse, naming what changed)",
    )
    b.add_argument("-q", "--quiet", action="store_true", help="no progress")
    b.set_defaults(func=cmd_batch)

    ev = sub.add_parser(
        "eval",
        help="score a folder of fused images against their sources",
        description="Score fused images <pair_id>.<ext> in FUSED_DIR against the dataset folder "
        "<pair_id>/<source>.<ext> with the chosen metric convention.",
    )
    ev.add_argument("fused_dir", metavar="FUSED_DIR")
    ev.add_argument("--sources", required=True, metavar="DATASET_DIR", help="dataset folder of source pairs")
    ev.add_argument("--convention", default="cddfuse", help="metric convention: cddfuse (default), vifb, mefb")
    ev.add_argument("--metrics", help="comma-separated metric names (default: the convention's set)")
    ev.add_argument("--method", help="method name for the table (default: the folder name)")
    _add_lpips_arg(ev)
    ev.add_argument("--csv", required=True, metavar="OUT.csv", help="tidy CSV: dataset, pair, method, metric, value")
    ev.add_argument("--md", metavar="OUT.md", help="Markdown summary (mean ± std, best in bold)")
    ev.add_argument(
        "--allow-missing",
        action="store_true",
        help="score the pairs that have a fused image and exit 0 "
        "(default: a missing fused image is reported and the exit code is 1)",
    )
    ev.add_argument("-q", "--quiet", action="store_true", help="no table or progress (problems are still reported)")
    ev.set_defaults(func=cmd_eval)

    be = sub.add_parser(
        "bench",
        help="run methods × datasets × metrics (resumable)",
        description="Fuse every pair of each dataset with each method, add precomputed peer "
        "outputs, score everything and write results.csv, summary.md, manifest.json "
        "and plots/. Rerunning with the same --out skips finished pairs.",
    )
    be.add_argument("--datasets", nargs="+", required=True, metavar="DIR", help="dataset folders")
    be.add_argument(
        "--methods",
        nargs="*",
        default=["dig2dig"],
        metavar="METHOD",
        help="methods to run, each NAME or NAME:key=value,… (e.g. dig2dig:steps=15,distance=l1); none for peers only",
    )
    be.add_argument(
        "--peers",
        nargs="*",
        default=[],
        metavar="DIR",
        help="folders of precomputed fused images <pair_id>.<ext>, one per peer method",
    )
    be.add_argument("--convention", default="cddfuse", help="metric convention (default cddfuse)")
    be.add_argument("--metrics", help="comma-separated metric names (default: the convention's set)")
    be.add_argument("--out", required=True, help="output folder")
    _add_lpips_arg(be)
    be.add_argument("--steps", help="reverse steps for diffusion methods (method default if omitted)")
    be.add_argument("--seed", type=int, default=0, help="global seed; each pair's seed derives from it and its id")
    be.add_argument("--task", default="auto", choices=TASK_CHOICES)
    be.add_argument("--limit", type=_positive_int, help="only the first N pairs of each dataset (N >= 1)")
    be.add_argument("--no-plots", action="store_true")
    be.add_argument(
        "--overwrite",
        action="store_true",
        help="redo fused images made with other settings (default: refuse, naming what changed)",
    )
    _add_prior_args(be)
    be.set_defaults(func=cmd_bench)

    from .web import server as web

    sv = sub.add_parser(
        "serve",
        help="a web page to try fusion and see the DIG maps (pip install 'dig2dig[web]')",
        description="Serve one page (and its JSON job API) on which sources can be dropped, fused "
        "and downloaded, with Dig2DIG's weight maps and DIG curves. Binds to 127.0.0.1 "
        "unless --host says otherwise (then --token is needed); one fusion runs at a "
        "time, the others queue within the limits below (503 beyond them).",
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=_port, default=8000, help="port, 1 to 65535 (default 8000)")
    _add_prior_args(sv)
    sv.add_argument(
        "--max-upload-mb",
        type=_positive_float,
        default=web.MAX_UPLOAD_MB,
        help=f"largest request, chunked or not (default {web.MAX_UPLOAD_MB:g} MB)",
    )
    sv.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=None,
        metavar="N",
        help="largest source image in pixels (default 200000000)",
    )
    sv.add_argument(
        "--max-queue",
        type=_positive_int,
        default=web.MAX_QUEUE,
        metavar="N",
        help=f"jobs queued or running at once (default {web.MAX_QUEUE})",
    )
    sv.add_argument(
        "--max-queued-mp",
        type=_positive_float,
        default=web.MAX_QUEUED_MP,
        metavar="MP",
        help=f"megapixels of sources the queued and running jobs hold together (default "
        f"{web.MAX_QUEUED_MP:g}); a request beyond it waits for room (503)",
    )
    sv.add_argument(
        "--token",
        metavar="auto|TOKEN",
        default=os.environ.get("DIG2DIG_TOKEN"),
        help="require this token on every request ('auto': a random one, printed in the address); "
        "needed when --host is not a loopback address (default: $DIG2DIG_TOKEN, else none)",
    )
    sv.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (e.g. the name of a proxy in front); repeatable",
    )
    sv.set_defaults(func=cmd_serve)

    pr = sub.add_parser("prior", help="inspect the diffusion prior")
    psub = pr.add_subparsers(dest="prior_command", metavar="SUBCOMMAND", parser_class=OneLineParser)
    pr.set_defaults(func=None, help_of=pr)
    pi = psub.add_parser("info", help="print the prior's spec (architecture, sha256, schedule, provenance)")
    _add_prior_args(pi)
    pi.set_defaults(func=cmd_prior_info)
    pt = psub.add_parser(
        "train",
        help="train the compact prior (resumable)",
        description="Train dig2dig's compact luminance prior from a TOML config. Rerunning with "
        "the same --out resumes from its last checkpoint.",
    )
    pt.add_argument("--config", required=True, help="training config, e.g. configs/prior.toml")
    pt.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl, best/)")
    pt.add_argument(
        "--data-root",
        help="folder the config's data paths are relative to (default: $DIG2DIG_SHARED, else the config's root)",
    )
    pt.add_argument("--max-steps", type=_positive_int, help="stop at this total step count")
    pt.add_argument("--minutes", type=_positive_float, help="stop after this many minutes of this run")
    pt.add_argument("--device", help="torch device (default: cuda if available)")
    pt.add_argument(
        "--init",
        metavar="PRIOR_DIR",
        help="start a new run from exported weights (e.g. the embedded "
        "prior's folder) instead of random initialisation; ignored when --out has a checkpoint",
    )
    pt.add_argument(
        "--threads",
        type=_positive_int,
        help="CPU threads (default: the config's); use 1 when sharing the "
        "machine with other jobs -- oversubscribed threads stall each other",
    )
    pt.set_defaults(func=cmd_prior_train)
    pe = psub.add_parser(
        "eval",
        help="PSNR of the prior's one-step x̂0 as a Gaussian denoiser",
        description="Add Gaussian noise of each σ (0-255 scale) to every image of a folder, "
        "denoise with one prior call at the matching DDPM timestep, report PSNR.",
    )
    pe.add_argument("--images", required=True, help="folder of clean images (gray or colour; luminance is used)")
    pe.add_argument(
        "--sigma",
        type=_positive_float,
        nargs="+",
        default=[15, 25, 50],
        help="noise levels on the 0-255 scale, each > 0 (default 15 25 50)",
    )
    pe.add_argument("--seed", type=_seed, default=0, help="noise seed (default 0)")
    pe.add_argument("--per-image", action="store_true", help="also print each image's PSNR")
    _add_prior_args(pe)
    pe.set_defaults(func=cmd_prior_eval)
    for p in [parser, *sub.choices.values(), *psub.choices.values()]:  # noqa: B007
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS if p is not parser else False,
            help="show the full trace of an unexpected error",
        )
    return parser


def _steps_arg(s: str | None):
    if s is None:
        return None
    return int(s) if s.strip().isdigit() else s


def _int_in(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high], refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            allowed = f"at least {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{text} must be {allowed}")
        return value

    return parse


_positive_int = _int_in(1)
_port = _int_in(1, 65535)
_seed = _int_in(0, SEED_LIMIT - 1)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def _dig_regions(specs: list[str]) -> dict:
    regions = {}
    for spec in specs:
        name, _, box = spec.partition("=")
        try:
            vals = [int(v) for v in box.split(",")]
        except ValueError:
            vals = []
        if not name or len(vals) != 4:
            raise ValueError(
                f"--dig-region {spec!r}: write NAME=X0,Y0,X1,Y1 (a box in pixels), e.g. person=200,80,320,400"
            )
        if name in regions:
            raise ValueError(f"--dig-region name {name!r} is given twice; give each region its own name")
        regions[name] = vals
    return regions


FIGURE_FILES = {  # what the figure flags write into their folders (weights_step<k>.png per refresh)
    "--save-dig": ("dig_curves.png", "dig.json", "weights_step*.png"),
    "--save-selection": ("ccf_selection.png", "ccf_selection.json"),
}


def _clashes(path: Path, folder: Path, names) -> bool:
    import fnmatch

    return path.parent.resolve() == folder.resolve() and any(fnmatch.fnmatch(path.name, n) for n in names)


class AllOrNothing:
    """Outputs of one command: if a later write fails, the ones this command wrote are removed again."""

    def __init__(self):
        self.created: list[Path] = []

    def add(self, paths) -> None:
        for p in [paths] if isinstance(paths, (str, Path)) else paths:
            self.created.append(Path(p))

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None:
            for p in self.created:
                Path(p).unlink(missing_ok=True)
        return False


def _spec_from_args(args: argparse.Namespace, **extra):
    """The :class:`~dig2dig.spec.FusionSpec` that ``fuse`` and ``batch`` flags ask for."""
    from .methods import get_method
    from .spec import FusionSpec

    diffusion = get_method(args.method).needs_prior
    return FusionSpec(
        method=args.method,
        options=method_options_from_args(args),
        steps=_steps_arg(args.steps),
        seed=args.seed,
        task=args.task,
        prior=args.prior if diffusion else None,
        prior_spec=args.prior_config if diffusion else None,
        device=args.device,
        resize=args.resize,
        register=args.register,
        max_pixels=args.max_pixels,
        **extra,
    )


def cmd_fuse(args: argparse.Namespace) -> int:
    from .io import SIXTEEN_BIT_SUFFIXES, WRITE_SUFFIXES, check_output_dir, check_output_file, remove_stale_temps

    out = Path(args.output)
    # everything that will be written is checked before any work: writable, no source overwritten, no two
    # outputs in one file
    check_output_file(out, "output", sources=args.sources)
    if out.suffix.lower() not in WRITE_SUFFIXES:
        raise ValueError(f"output {out.name!r} needs one of the extensions {', '.join(WRITE_SUFFIXES)}")
    if args.bit_depth == 16 and out.suffix.lower() not in SIXTEEN_BIT_SUFFIXES:
        raise ValueError(f"--bit-depth 16 needs a .png or .tif output, not {out.name!r}")
    if args.report:
        check_output_file(args.report, "--report file", sources=args.sources)
        if Path(args.report).resolve() == out.resolve():
            raise ValueError(f"--report {args.report!r} is the output image; give the report its own file name")
    for flag, folder in (("--save-dig", args.save_dig), ("--save-selection", args.save_selection)):
        if folder:
            check_output_dir(folder, f"{flag} folder")
            for what, p in [
                ("output", out),
                *(("--report file", Path(r)) for r in [args.report] if r),
                *(("source", Path(s)) for s in args.sources),
            ]:
                if _clashes(p, Path(folder), FIGURE_FILES[flag]):
                    raise ValueError(
                        f"{flag} {folder!r} would write over the {what} {str(p)!r} (it writes "
                        f"{', '.join(FIGURE_FILES[flag])}); choose another folder"
                    )
    remove_stale_temps(out.parent if str(out.parent) else ".")
    from .api import run
    from .methods import get_method

    if args.save_dig and args.method != "dig2dig":
        raise ValueError("--save-dig needs --method dig2dig")
    regions = _dig_regions(args.dig_region) if args.dig_region else None
    if regions and not args.save_dig:
        raise ValueError("--dig-region needs --save-dig DIR")
    if regions:  # check the boxes against the output size (the first source's) before any work
        from .io import read_image
        from .viz import region_masks

        size = read_image(args.sources[0]).data.shape[:2]
        region_masks(regions, size, size)
    if args.save_selection and args.method != "ccf":
        raise ValueError("--save-selection needs --method ccf")
    if (args.prior or args.prior_config) and not get_method(args.method).needs_prior:
        print(
            f"dig2dig: warning: method {args.method} uses no prior; --prior/--prior-config are not used",
            file=sys.stderr,
        )
    spec = _spec_from_args(args)
    result = run(
        spec.resolve(), [args.sources], seeds=[spec.seed], record=bool(args.save_dig), progress=not args.quiet
    )[0]
    with AllOrNothing() as written:
        existed = out.exists()
        path = result.save(out, args.bit_depth)
        if not existed:
            written.add(path)
        if args.save_dig:
            from .viz import save_dig

            written.add(save_dig(result, args.save_dig, regions=regions))
        if args.save_selection:
            from .guidance.ccf import save_selection

            written.add(save_selection(result.guidance, args.save_selection))
        if args.report:
            from .io import atomic_write_text

            atomic_write_text(
                args.report,
                json.dumps({"output": str(path), "config": result.config, "timings": result.timings}, indent=2),
            )
    if not args.quiet:
        c = result.config
        roles = ", ".join(f"{k}={Path(v).name}" for k, v in c["roles"].items())
        print(f"task {c['task']} ({c['task_reason']}); {roles}", file=sys.stderr)
        for note in c["notes"]:
            print(f"note: {note}", file=sys.stderr)
        if c["prior"]:
            print(
                f"{c['method']}: {c['steps']} steps, seed {c['seed']}, prior {c['prior']['name']} on {c['device']}: "
                f"{result.timings['sample_total_s']:.2f} s ({result.timings['per_step_s'] * 1000:.0f} ms/step) "
                f"-> {path}",
                file=sys.stderr,
            )
        else:
            print(f"{c['method']}: {result.timings['run_s']:.2f} s -> {path}", file=sys.stderr)
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import collect_items, parse_shard, run_batch

    shard = parse_shard(args.shard)
    items = collect_items(args.inputs)
    config = _spec_from_args(args, ext=f".{args.format}", bit_depth=args.bit_depth)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    summary = run_batch(
        items,
        args.output,
        config,
        shard=shard,
        executor=args.executor,
        workers=args.workers,
        threads=args.threads,
        ray_address=args.ray_address,
        overwrite=args.overwrite,
        progress=not args.quiet,
        log=log,
        inputs=args.inputs,
    )
    print(f"dig2dig batch: {summary.line()} -> {args.output}", file=sys.stderr)
    for f in summary.failed[:20]:
        print(f"  failed: {f['id']}: {f['error']}", file=sys.stderr)
    if len(summary.failed) > 20:
        print(f"  … and {len(summary.failed) - 20} more (see the run log in {args.output})", file=sys.stderr)
    return summary.exit_code


def _metric_list(text: str | None):
    return [m.strip() for m in text.split(",") if m.strip()] if text else None


def _add_lpips_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lpips-weights",
        metavar="PATHS",
        help="local LPIPS weights (AlexNet trunk and lpips v0.1 heads, "
        "':'-separated; default $DIG2DIG_LPIPS_WEIGHTS) for --metrics LPIPS; nothing is downloaded",
    )


def _use_lpips_weights(args: argparse.Namespace) -> None:
    if args.lpips_weights:
        from .metrics.lpips import ENV_VAR

        os.environ[ENV_VAR] = args.lpips_weights


def cmd_eval(args: argparse.Namespace) -> int:
    from .bench import evaluate_folder, summary_markdown, write_csv
    from .io import atomic_write_text

    _use_lpips_weights(args)

    from .errors import EXIT_ITEMS_FAILED
    from .io import check_output_file, list_images

    protected = []  # the images being scored, and their sources: never overwritten by a table
    for folder in (Path(args.fused_dir), Path(args.sources)):
        if folder.is_dir():
            protected += list_images(folder) + [f for d in folder.iterdir() if d.is_dir() for f in list_images(d)]
    check_output_file(args.csv, "--csv file", sources=protected)
    if args.md:
        check_output_file(args.md, "--md file", sources=protected)
        if Path(args.md).resolve() == Path(args.csv).resolve():
            raise ValueError(f"--md {args.md!r} is the --csv file; give each its own file name")
    ev = evaluate_folder(
        args.fused_dir,
        args.sources,
        convention=args.convention,
        metrics=_metric_list(args.metrics),
        method=args.method,
        progress=not args.quiet,
    )
    md = summary_markdown(ev.rows, title=f"{Path(args.fused_dir).name} ({args.convention} convention)")
    with AllOrNothing() as written:
        for path, write in (
            (args.csv, lambda: write_csv(args.csv, ev.rows)),
            (args.md, lambda: atomic_write_text(args.md, md)),
        ):
            if path:
                existed = Path(path).exists()
                write()
                if not existed:
                    written.add(path)
    if not args.quiet:
        print(md)
    scored = len({r["pair"] for r in ev.rows})
    problems = []
    if ev.missing and not args.allow_missing:  # said even with -q: a table over a subset must not pass unnoticed
        problems.append(
            f"no fused image for {len(ev.missing)} pair(s): {', '.join(ev.missing[:5])}"
            + (" …" if len(ev.missing) > 5 else "")
            + " (--allow-missing to accept a subset)"
        )
    for e in ev.errors:
        problems.append(f"pair {e['pair']}: {e['error']}")
    for p in problems:
        print(f"dig2dig: {p}", file=sys.stderr)
    if problems:
        print(f"dig2dig eval: scored {scored} of {ev.pairs} pairs", file=sys.stderr)
        return EXIT_ITEMS_FAILED
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench
    from .spec import FusionSpec

    _use_lpips_weights(args)
    methods = [m for arg in args.methods for m in ([arg] if ":" in arg else arg.split(",")) if m.strip()]
    written = run_bench(
        args.datasets,
        methods,
        args.out,
        peers=args.peers,
        convention=args.convention,
        metrics=_metric_list(args.metrics),
        spec=FusionSpec(
            steps=_steps_arg(args.steps),
            seed=args.seed,
            task=args.task,
            prior=args.prior,
            prior_spec=args.prior_config,
            device=args.device,
        ),
        limit=args.limit,
        plots=not args.no_plots,
        overwrite=args.overwrite,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(Path(written["markdown"]).read_text())
    for k, v in written.items():
        if k != "incomplete":
            print(f"{k}: {v}", file=sys.stderr)
    if written["incomplete"]:
        from .errors import EXIT_ITEMS_FAILED

        print(
            "dig2dig bench: some pairs could not be fused or scored (listed in summary.md and manifest.json)",
            file=sys.stderr,
        )
        return EXIT_ITEMS_FAILED
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValueError("dig2dig serve needs the web extra: pip install 'dig2dig[web]'") from None
    from .web.server import is_loopback, serve

    token = args.token
    if token == "auto":
        import secrets

        token = secrets.token_urlsafe(18)
    if token is not None and len(token) < 12:
        raise ValueError(f"--token is {len(token)} characters; use at least 12 (or --token auto)")
    if not is_loopback(args.host) and token is None:
        raise ValueError(
            f"--host {args.host} serves beyond this machine: pass --token auto (or a token of your "
            f"own) so that only people given the address can use it"
        )
    import socket

    try:  # a host that does not resolve or a port in use: say so before anything starts
        infos = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as e:
        raise ValueError(
            f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); choose another --host or --port"
        ) from None
    shown = f"[{args.host}]" if ":" in args.host else args.host
    where = f"http://{shown}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"dig2dig serve: {where} (Ctrl-C to stop)", file=sys.stderr)
    serve(
        host=args.host,
        port=args.port,
        allow_hosts=tuple(args.allow_host),
        token=token,
        prior=args.prior,
        prior_spec=args.prior_config,
        device=args.device,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_queue=args.max_queue,
        max_queued_mp=args.max_queued_mp,
    )
    return 0


def cmd_prior_info(args: argparse.Namespace) -> int:
    from .prior import load_prior

    den = load_prior(args.prior, spec=args.prior_config, device=args.device or "cpu")
    spec = den.spec.to_dict()
    assert den.module is not None  # loaded priors are nn.Modules
    spec["parameters"] = sum(p.numel() for p in den.module.parameters())
    stored = Path(spec.get("source") or "") / "spec.json"
    if stored.is_file():  # a dig2dig prior folder: how its weights are stored
        raw = json.loads(stored.read_text())
        weights = stored.parent / raw.get("weights", "weights.safetensors")
        spec["stored"] = {
            "file": weights.name,
            "dtype": raw.get("dtype"),
            "megabytes": round(weights.stat().st_size / 1e6, 2) if weights.is_file() else None,
        }
    print(json.dumps(spec, indent=2))
    return 0


def cmd_prior_train(args: argparse.Namespace) -> int:
    from .prior.train import main_train

    return main_train(args)


def cmd_prior_eval(args: argparse.Namespace) -> int:
    from .prior import load_prior
    from .prior.evaluate import denoise_scores, load_gray_folder, timestep_for_sigma
    from .schedule import alphas_cumprod

    for sigma in args.sigma:  # before anything is loaded
        timestep_for_sigma(alphas_cumprod(), sigma)
    den = load_prior(args.prior, spec=args.prior_config, device=args.device or "cpu")
    images = load_gray_folder(args.images)
    print(f"prior {den.spec.name} ({den.spec.sha256[:12]}), {len(images)} images from {args.images}")
    for s in denoise_scores(den, images, args.sigma, seed=args.seed):
        print(f"sigma {s.sigma:g}: t={s.t}  PSNR {s.psnr:.2f} dB")
        if args.per_image:
            for name, v in s.per_image.items():
                print(f"    {name}: {v:.2f}")
    return 0


def _write_trace(exc: BaseException) -> str | None:
    """The full trace of an unexpected error, in a file the message can point to."""
    import tempfile
    import time
    import traceback

    path = Path(tempfile.gettempdir()) / f"dig2dig-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        path.write_text("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return str(path)


def _warn_in_one_line(message, category, filename, lineno, file=None, line=None):
    print(f"dig2dig: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The command line, behind one error boundary: an expected failure prints one line
    ``dig2dig: error: <what>, <the fix>`` and returns its exit code (see :mod:`dig2dig.errors`); an
    unexpected one prints a one-line summary and where its full trace was written (``--debug``
    shows it inline).  SIGTERM is handled like Ctrl-C, so interrupted writes clean up after themselves."""
    import signal
    import warnings

    from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, describe

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (argparse printed them), --help, --version
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        which = getattr(args, "help_of", parser)
        which.print_help(sys.stderr)
        print(f"dig2dig: error: give a command; see '{which.prog} --help'", file=sys.stderr)
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False) or os.environ.get("DIG2DIG_DEBUG"))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGTERM)
    in_main_thread = True
    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread (e.g. called from a server): leave signals alone
        in_main_thread = False
    old_showwarning = warnings.showwarning
    if not debug:
        warnings.showwarning = _warn_in_one_line
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `dig2dig prior info | head`: the reader left, nothing is wrong
        try:
            sys.stderr.close()
        except OSError:
            pass
        return 0
    except BaseException as e:  # noqa: BLE001 -- the boundary: nothing escapes as a traceback
        if isinstance(e, SystemExit):
            raise
        code, message = describe(e, "cli")
        if debug and code != EXIT_INTERRUPTED:
            import traceback

            traceback.print_exc()
        if code == EXIT_INTERRUPTED:
            print(f"dig2dig: {message}", file=sys.stderr)
        elif code == EXIT_INTERNAL:
            where = _write_trace(e)
            print(
                f"dig2dig: internal error: {message}; "
                + (f"the full trace is in {where} " if where else "")
                + "(rerun with --debug to see it here); please report it",
                file=sys.stderr,
            )
        else:
            print(f"dig2dig: error: {message}", file=sys.stderr)
        return code
    finally:
        warnings.showwarning = old_showwarning
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
