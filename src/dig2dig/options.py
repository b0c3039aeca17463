"""Method options, each defined once: name, type, default, range and help -- for every method here.

A method's options are the fields of one frozen dataclass (a subclass of :class:`Options`, declared
with :func:`option`); what each option does is explained beside the method's math
(:mod:`dig2dig.guidance`).  Everything else is derived from it: :class:`~dig2dig.methods.Method`'s
defaults, the validation that runs before any work, the ``dig2dig fuse`` flags, ``docs/options.md``
and the options table of :func:`dig2dig.fuse`'s documentation.  This module imports neither torch nor
the method code, so the command line can build its help from it instantly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

KINDS = ("int", "float", "bool", "str", "any")


@dataclass(frozen=True)
class OptionInfo:
    """How one option is typed, bounded and described (the metadata of an :func:`option` field)."""

    help: str
    kind: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False  # None is allowed (and means what ``none_means`` says)
    none_means: str = ""
    cli: bool = True
    metavar: str | None = None
    check: Callable[[Any], Any] | None = None  # extra validation/normalisation for kind "any"
    name: str = ""
    default: Any = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """The allowed values in words, e.g. ``> 0``, ``in [0, 1)``, ``l2, l1``."""
        if self.choices:
            return ", ".join(str(c) for c in self.choices)
        lo = None if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        hi = None if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if hi:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return {"bool": "true or false", "int": "an integer", "float": "a number"}.get(self.kind, "")

    def default_text(self) -> str:
        if self.default is None:
            return self.none_means or "none"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    def validate(self, value: Any, owner: str) -> Any:
        """The value, converted to the option's type, or a ValueError naming the value and the allowed range."""
        given = value

        def bad(why: str) -> ValueError:
            allowed = self.range_text()
            return ValueError(
                f"{owner} option {self.name}={given!r} {why}"
                + (f"; use {allowed}" if allowed else "")
                + (f" ({self.help})" if self.help else "")
            )

        if value is None:
            if self.optional:
                return None
            raise bad("is not set")
        if self.kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            if isinstance(value, bool):
                return value
            raise bad("is not true or false")
        if self.kind == "int":
            if isinstance(value, bool):
                raise bad("is not an integer")
            try:
                num = float(value) if not isinstance(value, int) else value
            except (TypeError, ValueError):
                raise bad("is not an integer") from None
            if not (isinstance(num, int) or (math.isfinite(num) and float(num).is_integer())):
                raise bad("is not an integer")
            value = int(num)
            if abs(value) > 2**31:
                raise bad("is far out of range")
        elif self.kind == "float":
            if isinstance(value, bool):
                raise bad("is not a number")
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise bad("is not a number") from None
            if not math.isfinite(value):
                raise bad("is not a finite number")
        elif self.kind == "str":
            if not isinstance(value, str):
                raise bad("is not a string")
            if self.choices:
                if value.lower() not in self.choices:
                    raise bad("is not one of the choices")
                value = value.lower()
        elif self.check is not None:
            try:
                value = self.check(value)
            except (TypeError, ValueError) as e:
                raise bad(f"is not usable: {e}") from None
        if self.kind in ("int", "float"):
            lo_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            hi_bad = self.high is not None and (value >= self.high if self.high_open else value > self.high)
            if lo_bad or hi_bad:
                raise bad("is out of range")
        return value


def option(
    default: Any,
    help: str,
    *,
    kind: str | None = None,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    none_means: str = "",
    cli: bool = True,
    metavar: str | None = None,
    check: Callable[[Any], Any] | None = None,
) -> Any:
    """Declare an option as a dataclass field; the kind is read off the default unless given."""
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(default), "any")
    if kind not in KINDS:
        raise ValueError(f"unknown option kind {kind!r}")
    info = OptionInfo(
        help=help,
        kind=kind,
        choices=tuple(choices) if choices else None,
        low=low,
        high=high,
        low_open=low_open,
        high_open=high_open,
        optional=default is None,
        none_means=none_means,
        cli=cli,
        metavar=metavar,
        check=check,
        default=default,
    )
    return field(default=default, metadata={"option": info})


class Options:
    """Base of the per-method option records (frozen dataclasses whose fields are declared with :func:`option`)."""

    # every concrete record is a dataclass (so :func:`dataclasses.fields` applies to it)
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    owner: ClassVar[str] = "method"  # named in error messages, e.g. "dig2dig"
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # preset name -> other defaults (option ``preset``)

    def __post_init__(self) -> None:
        for info in self.infos():
            object.__setattr__(self, info.name, info.validate(getattr(self, info.name), self.owner))
        self.check()

    def check(self) -> None:
        """Rules that involve several options (after each one is valid on its own)."""

    def max_batch(self) -> int | None:
        """The largest batch these options allow (None: any); e.g. when each item decides its own steps."""
        return None

    def forward_images(self, sources: int) -> float:
        """The largest prior forward the method makes per item, in full-size images (for memory estimates)."""
        return 1.0

    @classmethod
    def infos(cls) -> list[OptionInfo]:
        return [
            dataclasses.replace(f.metadata["option"], name=f.name)
            for f in dataclasses.fields(cls)
            if "option" in f.metadata
        ]

    @classmethod
    def create(cls, given: dict[str, Any] | None = None) -> Self:
        """Validated options from keyword values; unknown names are an error that lists the known ones."""
        given = dict(given or {})
        names = [i.name for i in cls.infos()]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"{cls.owner} has no option(s) {unknown}; its options are {names or 'none'}")
        preset = given.get("preset")
        if isinstance(preset, str) and preset.strip().lower() in cls.presets:  # options given override it
            given = {**cls.presets[preset.strip().lower()], **given}
        return cls(**given)

    @classmethod
    def ensure(cls, opts: Options | None) -> Self:
        """``opts`` if it is this record (validated when made), the defaults if None; else a TypeError."""
        if opts is None:
            return cls.create()
        if not isinstance(opts, cls):
            raise TypeError(f"expected {cls.__name__} (e.g. {cls.__name__}.create({{...}})), got {type(opts).__name__}")
        return opts

    def values(self) -> dict[str, Any]:
        """The options as given to the method (callables stay callables)."""
        return {i.name: getattr(self, i.name) for i in self.infos()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: what a report or a configuration hash records."""
        out = {}
        for k, v in self.values().items():
            if isinstance(v, tuple):
                v = list(v)
            elif v is not None and not isinstance(v, (bool, int, float, str, list)):
                v = getattr(v, "__qualname__", None) or type(v).__qualname__
            out[k] = v
        return out


def markdown_table(records: list[tuple[str, type[Options]]]) -> str:
    """One table of every option: method, option (Python keyword and CLI flag), default, allowed values, meaning."""
    rows = ["| method | option | flag | default | allowed | meaning |", "|---|---|---|---|---|---|"]
    for method, cls in records:
        for i in cls.infos():
            rows.append(
                f"| {method} | `{i.name}` | {'`' + i.flag + '`' if i.cli else '–'} | {i.default_text()} | "
                f"{i.range_text() or '–'} | {i.help} |"
            )
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------------------------
# option records


@dataclass(frozen=True)
class DIGOptions(Options):
    """Dig2DIG (:mod:`dig2dig.guidance.dig`)."""

    owner = "dig2dig"
    presets = {  # one option away from the default (options given as well override the preset)
        "paper": {"blend": "pixel", "mixing": "attractive", "limit": 0.0, "smooth": 0.0, "temperature": 1.0},
        "soft": {"blend": "pixel", "mixing": "complementary", "limit": 1.0, "smooth": 12.0, "temperature": 1.0},
        "select": {"blend": "pixel", "mixing": "complementary", "limit": 20.0, "smooth": 32.0, "temperature": 0.02},
    }
    preset: str = option(
        "default",
        "a set of other defaults: paper = the paper read literally (per-pixel blend, "
        "the paper's mixing, no soft limit, no smoothing, temperature 1); soft = dig2dig 0.1's "
        "near-average per-pixel weights (limit 1, smooth 12, temperature 1); select = dig2dig 0.2's "
        "per-pixel selection (limit 20, smooth 32, temperature 0.02); options given as well "
        "override it",
        choices=("default", "paper", "soft", "select"),
    )
    blend: str = option(
        "pyramid",
        "where the weights act: pyramid = per scale, on the sources' Laplacian-pyramid "
        "detail bands (DIG per band), the coarsest level an EM consensus; pixel = one per-pixel blend "
        "of intensities",
        choices=("pyramid", "pixel"),
    )
    levels: int | None = option(
        None, "pyramid blend: detail levels", kind="int", low=1, high=8, none_means="from the size, 1 to 5"
    )
    base: str = option(
        "auto",
        "pyramid blend: weights of the coarsest level: consensus = the EM precisions of the "
        "released DDFM (near the sources' mean); select = the intensity DIG times the paper's EM "
        "precisions (the source DIG favours wins the region); auto = the task's (select for vif and "
        "mff, consensus for mif and mef)",
        choices=("auto", "consensus", "select"),
    )
    band_smooth: float = option(
        1.0,
        "pyramid blend: σ of the Gaussian that smooths each band's DIG map, in pixels of that band (0: none)",
        low=0,
        high=64,
    )
    interval: int = option(10, "S: refresh the DIG weights every S steps", low=1, high=1000)
    distance: str = option(
        "l2", "distance between a denoised source and the source", choices=("l2", "l1", "ssim", "none")
    )
    temperature: float = option(0.2, "softmax temperature on the normalised gains", low=0, low_open=True, high=1000)
    limit: float = option(
        5.0, "soft limit L of the scaled gains before the softmax (L tanh(z/L); 0: none)", low=0, high=100
    )
    weights: str = option("dig", "per-pixel DIG weights, or equal weights (fixed guidance)", choices=("dig", "equal"))
    mixing: str = option(
        "complementary",
        "pixel blend: EM mixing rule: the released DDFM's, or the paper's f = x + v",
        choices=("complementary", "attractive"),
    )
    smooth: float = option(
        4.0,
        "σ in pixels of the Gaussian that smooths the detail salience (pyramid blend) or "
        "the DIG maps (pixel blend); 0: none",
        low=0,
        high=512,
    )
    dig_scale: float = option(0.5, "resolution of the DIG maps relative to the image", low=0, high=1, low_open=True)
    window: str = option(
        "backward",
        "measure DIG over the stretch just traversed (backward) or the coming one (forward: weights from step 0)",
        choices=("backward", "forward"),
    )
    accelerate: float = option(
        0.0,
        "merge pairs of steps up to the next refresh where the total DIG is below R × its largest so far (0: off)",
        low=0,
        high=1,
        high_open=True,
        metavar="R",
    )
    power: float = option(
        2.0,
        "exponent P of the DIG-N grid t_i = 999 (i/(N-1))^P (big steps at high noise)",
        low=0,
        low_open=True,
        high=10,
    )

    def check(self) -> None:
        if self.blend == "pyramid" and self.distance == "ssim":
            raise ValueError(
                "dig2dig option distance='ssim' measures whole images, not pyramid bands; use it with "
                "blend=pixel, or distance l2, l1 or none"
            )

    def max_batch(self) -> int | None:
        return 1 if self.accelerate > 0 else None  # merged steps are decided per image

    def forward_images(self, sources: int) -> float:
        # a refresh denoises every source at dig_scale, at up to two levels in one forward
        return max(1.0, 2 * sources * self.dig_scale**2)


@dataclass(frozen=True)
class DDFMOptions(Options):
    """DDFM (:mod:`dig2dig.guidance.ddfm`)."""

    owner = "ddfm"
    mapping: str = option(
        "release",
        "output mapping and slot order: the released code's, or the paper's f = x + v",
        choices=("release", "paper"),
    )
    lamb: float = option(0.5, "λ of the total-variation term", low=0, low_open=True, high=100)
    rho: float = option(0.001, "ρ of the total-variation term", low=0, low_open=True, high=100)


def _conditions(value) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)):
        raise TypeError("give a comma-separated string or a list of condition names")
    names = tuple(str(c).strip().lower() for c in value if str(c).strip())
    if not names:
        raise ValueError("no condition named")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate conditions in {list(names)}")
    return names


def _extractor(value):
    if callable(value) or (isinstance(value, str) and ":" in value):
        return value
    raise TypeError("need a torch callable or 'module:attr'")


# CCF's condition names: declared here, where its options are checked; what each condition computes is
# registered beside its code (dig2dig.guidance.ccf_conditions.register_condition adds names here too).
CCF_CONDITIONS: dict[str, bool] = {  # name -> needs a feature extractor
    **dict.fromkeys(
        ("mse", "lowfreq", "highfreq", "edge", "ssim", "sd", "sf", "ei", "cc", "scd", "vif", "msssim"), False
    ),
    "feature": True,
}


def check_condition_names(names: Sequence[str], feature_extractor=None) -> None:
    """Every name registered, and the extractor given where a condition needs one."""
    unknown = [c for c in names if c not in CCF_CONDITIONS]
    if unknown:
        raise ValueError(f"unknown CCF condition(s) {unknown}; available: {', '.join(CCF_CONDITIONS)}")
    needy = [c for c in names if CCF_CONDITIONS[c]]
    if needy and feature_extractor is None:
        raise ValueError(
            f"the {', '.join(repr(c) for c in needy)} condition needs feature_extractor= "
            f"(--feature-extractor MODULE:ATTR)"
        )


@dataclass(frozen=True)
class CCFOptions(Options):
    """CCF (:mod:`dig2dig.guidance.ccf`)."""

    owner = "ccf"
    conditions: tuple | None = option(
        None,
        "condition bank, comma-separated (see dig2dig.guidance.ccf_conditions)",
        kind="any",
        check=_conditions,
        none_means="the task's preset",
    )
    topk: int = option(3, "conditions selected per step", low=1, high=1000)
    lr: float = option(0.03, "Adam step size on x̂0", low=0, low_open=True, high=10)
    alpha: float = option(1.5, "GradNorm's α in the gate", low=0, high=100)
    release_compat: bool = option(False, "reproduce the released CCF code, its defects included")
    tiebreak: str | None = option(
        None,
        "order of tied gate weights in the top-k",
        kind="str",
        choices=("stable", "torch"),
        none_means="torch with release_compat, else stable",
    )
    feature_extractor: Any = option(
        None,
        "a torch module mapping an image to features, as 'module:attr' (a class is "
        "instantiated): adds the feature-matching condition",
        kind="any",
        check=_extractor,
        metavar="MODULE:ATTR",
    )

    def check(self) -> None:
        if self.conditions is not None:  # names against the condition registry, before any work
            try:
                check_condition_names(self.conditions, self.feature_extractor)
            except ValueError as e:
                raise ValueError(f"ccf option conditions={','.join(self.conditions)!r}: {e}") from None


@dataclass(frozen=True)
class NoOptions(Options):
    owner = "this method"


@dataclass(frozen=True)
class LaplacianOptions(Options):
    owner = "laplacian"
    levels: int | None = option(None, "pyramid levels", kind="int", low=1, high=16, none_means="from the size, 1 to 5")


@dataclass(frozen=True)
class GuidedOptions(Options):
    owner = "guided"
    r1: int = option(45, "radius of the base layer's guided filter", low=1, high=1000)
    eps1: float = option(0.3, "ε of the base layer's guided filter", low=0, low_open=True)
    r2: int = option(7, "radius of the detail layer's guided filter", low=1, high=1000)
    eps2: float = option(1e-6, "ε of the detail layer's guided filter", low=0, low_open=True)


@dataclass(frozen=True)
class MertensOptions(Options):
    owner = "mertens"
    contrast: float = option(1.0, "exponent of the contrast measure (|Laplacian|) in the weights", low=0, high=10)
    exposedness: float = option(1.0, "exponent of the well-exposedness measure in the weights", low=0, high=10)


# --------------------------------------------------------------------------------------------
# how the prior's forward runs (every diffusion method): tiles, precision, compilation


def _tile(value):
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", "off"):
            return text
        value = text
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError("use auto, off or a tile size in pixels") from None
    if isinstance(value, float) and not float(value).is_integer():
        raise ValueError("a tile size is a whole number of pixels")
    if not 8 <= n <= 65536:
        raise ValueError("a tile must be 8 to 65536 pixels")
    return n


@dataclass(frozen=True)
class PriorOptions(Options):
    """How the prior's network runs (:mod:`dig2dig.prior.execution`): the guidance always sees the whole image."""

    owner = "prior"
    tile: Any = option(
        "auto",
        "denoise in overlapping tiles of N pixels: auto tiles when a whole-image forward would "
        "need over half the device's memory, or the prior was trained at a fixed size (ADM-256: 256)",
        kind="any",
        check=_tile,
        metavar="auto|off|N",
    )
    tile_overlap: int | None = option(
        None,
        "pixels by which neighbouring tiles overlap (blended with a cosine ramp)",
        kind="int",
        low=0,
        high=65536,
        none_means="a quarter of the tile",
    )
    tile_batch: int = option(4, "tiles passed through the network together", low=1, high=4096)
    precision: str = option(
        "fp32",
        "precision of the prior's forward; the guidance math stays fp32. fp16/bf16: torch autocast "
        "(GPU); int8: the convolutions quantised, run by ONNX Runtime on the CPU (the int8 extra; "
        "built once per prior and cached)",
        choices=("fp32", "fp16", "bf16", "int8"),
    )
    compile: bool = option(
        False,
        "compile the prior's network with torch.compile, one graph per image shape: the "
        "first call of each shape compiles for minutes on a CPU, later ones run ~13% faster "
        "(worth it for a long batch, not for one image)",
    )

    def check(self) -> None:
        if self.precision == "int8" and self.compile:
            raise ValueError(
                "prior options precision=int8 and compile=True do not go together: int8 runs in ONNX "
                "Runtime, compile applies to the torch network; choose one"
            )
        if isinstance(self.tile, int) and self.tile_overlap is not None and 2 * self.tile_overlap >= self.tile:
            raise ValueError(
                f"prior option tile_overlap={self.tile_overlap} must be less than half the tile ({self.tile})"
            )
