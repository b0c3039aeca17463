"""The package's shape: no import cycles, one home per option (CLI, docs and records agree)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dig2dig"
REPO = SRC.parents[1]


def _module_name(path: Path) -> str:
    parts = ["dig2dig", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Edges module -> dig2dig module it imports, counting imports inside functions."""
    files = {(_module_name(p)): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:  # dig2dig.x.y (an attribute) -> dig2dig.x
                    t = t.rpartition(".")[0]
                if t.startswith("dig2dig") and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_inside_the_package():
    graph = import_graph()
    assert "dig2dig.api" in graph and "dig2dig.sampler" in graph["dig2dig.api"]
    assert cycles(graph) == []


# The layers, lowest first (CONTRIBUTING.md says what each holds).  A module imports only from its own
# layer or those below; a new module must be placed here.
LAYERS = [
    # 0 foundations: options, tasks, seeds, image I/O and math
    (
        "_version",
        "errors",
        "seeds",
        "color",
        "geometry",
        "registration",
        "schedule",
        "options",
        "tasks",
        "io",
        "functional",
        "baselines",
    ),
    ("prior", "sampler", "metrics"),  # 1 the prior, the sampler, the metrics
    ("guidance", "methods"),  # 2 the papers' methods
    ("spec", "api", "viz"),  # 3 the request and the library
    ("batch", "bench"),  # 4 collections
    ("web", "cli", "__main__", ""),  # 5 front ends (and the package's own namespace)
]


def _layer(module: str) -> int:
    top = module.removeprefix("dig2dig").lstrip(".").split(".")[0]
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_structure.py")


def test_modules_import_only_downward():
    graph = import_graph()
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, targets in graph.items()
        for b in targets
        if _layer(b) > _layer(a)
    ]
    assert not upward, upward
    assert _layer("dig2dig.options") < _layer("dig2dig.guidance.ccf") < _layer("dig2dig.spec")  # the map itself


def test_every_wrapper_of_the_prior_implements_the_protocol(tiny_gray_prior):
    from dig2dig.prior import Prior, TimedDenoiser, WrappedPrior
    from dig2dig.prior.execution import ExecutedDenoiser

    for wrapped in (TimedDenoiser(tiny_gray_prior), ExecutedDenoiser(tiny_gray_prior, tile=64)):
        assert isinstance(wrapped, Prior) and isinstance(wrapped, WrappedPrior)
        assert "__getattr__" not in type(wrapped).__dict__ and not hasattr(wrapped, "net_weights")
        assert wrapped.channels == tiny_gray_prior.channels and wrapped.spec is tiny_gray_prior.spec
    assert isinstance(tiny_gray_prior, Prior)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_fuse_help_lists_every_option_with_its_default():
    from dig2dig.methods import METHODS

    out = subprocess.run(
        [sys.executable, "-m", "dig2dig", "fuse", "--help"], capture_output=True, text=True, check=True
    ).stdout
    entries = {}  # flag -> its help text, joined over the wrapped lines
    for ln in out.splitlines():
        if ln.startswith("  -"):
            flag = ln.split()[0].rstrip(",")
            entries[flag] = ln
        elif ln.startswith("    ") and entries:
            entries[flag] += " " + ln.strip()
    for m in METHODS.values():
        for i in m.options.infos():
            assert i.cli, (m.name, i.name)  # every option is reachable from the command line
            text = " ".join(entries[i.flag].split())
            assert f"(default: {i.default_text()}" in text, text


def test_options_page_is_generated_from_the_records():
    from dig2dig.methods import options_document

    assert (REPO / "docs" / "options.md").read_text() == options_document(), (
        "docs/options.md is stale: python -m dig2dig.methods > docs/options.md"
    )


def test_fuse_docstring_carries_the_options_table():
    import dig2dig
    from dig2dig.methods import METHODS

    doc = dig2dig.fuse.__doc__
    for m in METHODS.values():
        for i in m.options.infos():
            assert f"| {m.name} | `{i.name}` |" in doc


def test_option_validation_names_the_value_and_the_range():
    from dig2dig.methods import get_method

    m = get_method("dig2dig")
    assert m.configure({}).values() == m.defaults
    for given, msg in (
        ({"interval": 0}, "interval=0 is out of range; use in [1, 1000]"),
        ({"temperature": -1}, "temperature=-1 is out of range; use in (0, 1000]"),
        ({"accelerate": 1.0}, "accelerate=1.0 is out of range; use in [0, 1)"),
        ({"distance": "cos"}, "distance='cos' is not one of the choices; use l2, l1, ssim, none"),
        ({"interval": "x"}, "interval='x' is not an integer"),
        ({"smooth": float("nan")}, "is not a finite number"),
        ({"nope": 1}, "has no option(s) ['nope']"),
    ):
        with pytest.raises(ValueError) as e:
            m.configure(given)
        assert msg in str(e.value)
    assert m.configure({"interval": "5", "temperature": "2"}).values()["interval"] == 5  # text from the CLI
    with pytest.raises(ValueError, match="unknown CCF condition"):
        get_method("ccf").configure({"conditions": "mse,nope"})


SHARED_MATH = {
    "luma",
    "gaussian_taps",
    "gaussian_blur",
    "local_ssim",
    "ssim_terms",
    "sobel_magnitude",
    "pyr_down",
    "pyr_up",
    "laplacian_pyramid",
    "x0_from_eps",
    "item_noise",
    "to_signed",
    "to_unit",
}


def test_the_shared_image_math_is_defined_once():
    """The helpers of functional.py have no second definition (under any of these names) elsewhere;
    methods that delegate to them (``Denoiser.x0_from_eps``) are not definitions."""
    homes: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        methods = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for f in c.body}
        for node in ast.walk(tree):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and id(node) not in methods
                and node.name.lstrip("_") in SHARED_MATH
            ):
                homes.setdefault(node.name.lstrip("_"), []).append(str(path.relative_to(SRC)))
    assert set(homes) == SHARED_MATH, f"no definition found for {sorted(SHARED_MATH - set(homes))}"
    again = {k: v for k, v in homes.items() if v != ["functional.py"]}
    assert not again, f"defined outside functional.py: {again}"


def test_every_result_file_names_the_script_that_writes_it():
    """Each table under benchmarks/results/ says which command wrote it, and that script writes that file."""
    import re

    results = REPO / "benchmarks" / "results"
    tables = sorted([*results.glob("*.md"), *results.glob("*.txt")])
    assert tables
    for table in tables:
        head = "\n".join(table.read_text().splitlines()[:6])
        m = re.search(r"[Ww]ritten by `python benchmarks/(\w+\.py)", head)
        assert m, f"{table.name}: no 'Written by `python benchmarks/...`' in its first lines"
        script = REPO / "benchmarks" / m.group(1)
        assert script.is_file(), f"{table.name} names {m.group(1)}, which does not exist"
        source = script.read_text()
        names = [  # the file names the script writes, f-string fields as wildcards
            re.sub(r"\\\{[^}]*\\\}", r"\\w+", re.escape(n)) for n in re.findall(r"[\w{}.]+\.(?:md|txt)\b", source)
        ]
        assert any(re.fullmatch(n, table.name) for n in names), f"{m.group(1)} does not write {table.name}"
        assert "command_line(" in source, f"{m.group(1)} does not put its command line in the header"
