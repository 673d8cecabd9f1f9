"""The import graph of the non-test code (read with `ast`): no circle, no package importing an entry script, and
the package order utils <- datasets <- losses <- models <- evaluate <- engine <- entry points (docs/LAYOUT.md);
each enumeration's values written once, by the module that implements them; the LICENSE and CITATION.cff."""
import ast
import os
import re
from collections import namedtuple

import pytest
import yaml

from tests.helpers import REPO_ROOT

# lowest first: a module may import its own package and those to its left, never one to its right
LAYERS = ("utils", "datasets", "losses", "models", "evaluate", "engine")
ENTRY_SCRIPTS = ("main_cross_domain_emb", "evaluation")
SKIPPED_DIRS = {"tests", "outputs", "data", "__pycache__"}

Edge = namedtuple("Edge", "importer imported path line")


def _skipped(name):
    return name in SKIPPED_DIRS or name.startswith(".")


def module_files(root):
    """{dotted module name: file path} of every .py file under `root` outside tests, virtual environments,
    outputs, data and hidden folders."""
    modules = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _skipped(d))
        rel = os.path.relpath(folder, root)
        parts = [] if rel == "." else rel.split(os.sep)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            stem = name[:-3]
            dotted = ".".join(parts if stem == "__init__" else parts + [stem])
            if dotted:
                modules[dotted] = os.path.join(folder, name)
    return modules


def _resolve(name, modules):
    """The most specific project module that `name` (a dotted import target) names, or None (not ours)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _package(module, path):
    return module if os.path.basename(path) == "__init__.py" else module.rpartition(".")[0]


def _is_import_module(call):
    func = call.func
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or \
        (isinstance(func, ast.Name) and func.id == "import_module")


def _targets(tree, module, path, modules):
    """(target, line) for every import in the file, at module level or inside a function: `import a.b`,
    `from a import b` (b a submodule or a name of a), relative imports, and importlib.import_module; a module
    that imports a computed name (lazy exports) imports every project module its string literals name."""
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package(module, path).split(".") if _package(module, path) else []
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                yield (sub if alias.name != "*" and sub in modules else base), node.lineno
        elif isinstance(node, ast.Call) and _is_import_module(node) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield arg.value, node.lineno
            else:
                dynamic = True
    if dynamic:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
                yield node.value, node.lineno


def import_edges(root):
    """Every import of one project module by another under `root`, self-imports left out."""
    modules = module_files(root)
    edges = set()
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        for target, line in _targets(tree, module, path, modules):
            imported = _resolve(target, modules)
            if imported is not None and imported != module:
                edges.add(Edge(module, imported, os.path.relpath(path, root), line))
    return sorted(edges)


def _strongly_connected(nodes, graph):
    """Tarjan's components, iterative (the graph of a large tree would exceed the recursion limit)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def _cycle_through(start, members, first_edge):
    """The shortest circle from `start` back to it inside one component, as its edges."""
    paths = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target, edge in sorted(first_edge.get(node, {}).items()):
            if target == start:
                return paths[node] + [edge]
            if target in members and target not in paths:
                paths[target] = paths[node] + [edge]
                queue.append(target)
    return []


def cycles(edges):
    """One circle (a list of edges) per strongly connected component of more than one module."""
    graph, first_edge = {}, {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
        first_edge.setdefault(edge.importer, {}).setdefault(edge.imported, edge)
    nodes = set(graph) | {e.imported for e in edges}
    return [_cycle_through(c[0], set(c), first_edge) for c in _strongly_connected(nodes, graph) if len(c) > 1]


def _top(module):
    return module.partition(".")[0]


def _rank(module):
    """Position in the package order; entry scripts, scripts/ and benchmarks/ stand above the engine."""
    top = _top(module)
    return LAYERS.index(top) if top in LAYERS else len(LAYERS)


def _describe(edge):
    return f"{edge.path}:{edge.line}: {edge.importer} imports {edge.imported}"


def entry_imports(edges):
    """Imports of an entry script by a module inside a package folder."""
    return [e for e in edges if "." in e.importer and _top(e.imported) in ENTRY_SCRIPTS]


def forbidden_edges(edges, pairs):
    return [e for e in edges if (_top(e.importer), _top(e.imported)) in pairs]


def backward_edges(edges):
    """Imports of a package that stands higher in the package order than the importer's."""
    return [e for e in edges if _rank(e.importer) < _rank(e.imported)]


def _fail_on(what, edges):
    if edges:
        pytest.fail(f"{what}:\n" + "\n".join(map(_describe, edges)), pytrace=False)


@pytest.fixture(scope="module")
def repo_edges():
    return import_edges(REPO_ROOT)


def test_the_graph_covers_every_package(repo_edges):
    """The walk finds the packages and entry scripts (a checker that reads nothing would pass the rest)."""
    modules = module_files(REPO_ROOT)
    tops = {_top(m) for m in modules}
    assert set(LAYERS) | set(ENTRY_SCRIPTS) | {"scripts", "benchmarks"} <= tops
    assert not any(m.startswith(("tests", ".venv")) for m in modules)
    importers = {_top(e.importer) for e in repo_edges}
    assert set(LAYERS) - {"utils"} | set(ENTRY_SCRIPTS) <= importers


def test_no_circle(repo_edges):
    found = cycles(repo_edges)
    if found:
        pytest.fail("import circles:\n" + "\n".join(
            " -> ".join([c[0].importer] + [e.imported for e in c]) + "\n  " + "\n  ".join(map(_describe, c))
            for c in found), pytrace=False)


def test_no_package_imports_an_entry_script(repo_edges):
    _fail_on("entry scripts imported by package modules", entry_imports(repo_edges))


def test_no_data_or_loss_module_imports_models(repo_edges):
    _fail_on("datasets/losses -> models imports",
             forbidden_edges(repo_edges, {("datasets", "models"), ("losses", "models")}))


def test_package_order(repo_edges):
    _fail_on(f"imports against the order {' <- '.join(LAYERS)} <- entry points", backward_edges(repo_edges))


# ----------------------------------------------------------------------------- each enumeration defined once

# (owner file, registry name): the values of one switch, defined by the module that implements them
ENUMERATIONS = {
    ("utils/distributed.py", "BACKENDS"): ("auto", "nccl", "gloo"),
    ("datasets/annotations.py", "DIRECTIONS"): ("video2goods", "goods2video"),
    ("datasets/eval_dataset.py", "TEST_FRAMES"): ("centres", "authors"),
    ("datasets/eval_dataset.py", "TEST_TEXTS"): ("fields", "authors_lines"),
    ("datasets/families.py", "FAMILIES"): ("chinese_clip", "clip", "cyclip", "fashionclip", "xclip"),
    ("datasets/frames.py", "FRAME_SOURCES"): ("images", "raw"),
    ("datasets/transforms.py", "PREPROCESS_PROFILES"): ("cn_clip", "authors"),
    ("datasets/translations.py", "ENGLISH_RULES"): ("per_field", "authors"),
    ("losses/query_contrastive.py", "NEGATIVES"): ("local", "global"),
    ("models/families.py", "FREEZE_PARTS"): ("visual", "text"),
    ("models/fusion.py", "FUSIONS"): ("add", "attention", "combiner", "fusion"),
    ("models/fusion.py", "TEXT_INPUTS"): ("layer6", "final"),
    ("models/pretrain.py", "STAGE_TERMS"): ("1", "2", "joint"),
    ("models/video_pooling.py", "POOLINGS"): ("add", "mean", "lstm", "ftt", "mit"),
    ("evaluate/extract.py", "FEATURES"): ("fused", "visual", "text"),
    ("evaluate/features.py", "DTYPES"): ("float16", "float32"),
    ("evaluate/metrics.py", "SEARCH_KS"): (1, 5, 10, 20, 50, 100),
    ("evaluate/metrics.py", "PAPER_KS"): (10, 20, 50, 100),
    ("evaluate/pipeline.py", "FEATURE_CHOICES"): ("fused", "visual", "text", "all"),
    ("evaluate/search.py", "INDEXES"): ("flat", "ivf_pq"),
    ("engine/tasks.py", "TASKS"): ("retrieval", "pretrain"),
    ("engine/tasks.py", "TRAIN_MODES"): ("query", "ft", "infer"),
    ("engine/trainer.py", "AMP_DTYPES"): ("bf16", "fp16", "none"),
    ("engine/trainer.py", "OPTIMIZERS"): ("adam", "adamw"),
}
IGNORE_INDEX_OWNER = "losses/mlm.py"


def _literal_values(node):
    """The values of a tuple, list or set written out of constants, else None (dict keys are a mapping's
    names, e.g. display names of the families, not a second list of allowed values)."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) > 1 and \
            all(isinstance(e, ast.Constant) for e in node.elts):
        return frozenset(e.value for e in node.elts)
    return None


def _parsed(root):
    for path in module_files(root).values():
        with open(path, encoding="utf-8") as f:
            yield os.path.relpath(path, root).replace(os.sep, "/"), ast.parse(f.read(), filename=path)


def enumeration_literals(root, enumerations):
    """{(owner, name): ["file:line", ...]} of every literal collection holding exactly that enumeration's
    values, and the registries missing from their owner file (no module-level assignment of the name)."""
    wanted = {frozenset(v): key for key, v in enumerations.items()}
    found, assigned = {key: [] for key in enumerations}, set()
    for rel, tree in _parsed(root):
        for node in ast.walk(tree):
            key = wanted.get(_literal_values(node))
            if key is not None:
                found[key].append(f"{rel}:{node.lineno}")
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            assigned |= {(rel, t.id) for t in targets if isinstance(t, ast.Name)}
    missing = sorted(key for key in enumerations if key not in assigned)
    return found, missing


def ignore_index_literals(root):
    """Where -100 (cross-entropy's ignore index) is written."""
    return [f"{rel}:{node.lineno}" for rel, tree in _parsed(root) for node in ast.walk(tree)
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant) and node.operand.value == 100]


def test_each_enumeration_is_defined_once_by_its_module():
    found, missing = enumeration_literals(REPO_ROOT, ENUMERATIONS)
    problems = [f"{owner}: no {name} (the registry of these values)" for owner, name in missing]
    for (owner, name), places in sorted(found.items()):
        others = [p for p in places if not p.startswith(owner + ":")]
        if others or len(places) > 1:
            problems.append(f"{name} ({owner}) written out again at: {', '.join(others or places[1:])}")
    ignore = ignore_index_literals(REPO_ROOT)
    if [p.partition(":")[0] for p in ignore] != [IGNORE_INDEX_OWNER]:
        problems.append(f"-100 written at {', '.join(ignore)}: expected once, as IGNORE_INDEX in {IGNORE_INDEX_OWNER}")
    if problems:
        pytest.fail("enumerations written more than once:\n" + "\n".join(problems), pytrace=False)


# ----------------------------------------------------------------------------- the checker on hand-built trees

def _write_tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _pairs(edges):
    return {(e.importer, e.imported) for e in edges}


def test_checker_resolves_every_import_form(tmp_path):
    _write_tree(tmp_path, {
        "utils/__init__.py": "",
        "utils/config.py": "import os\nimport yaml\n",
        "datasets/__init__.py": "import importlib\n_EXPORTS = {'Loader': 'datasets.loader'}\n"
                                "def __getattr__(name):\n    return importlib.import_module(_EXPORTS[name])\n",
        "datasets/loader.py": "from . import text\nfrom .text import clean\nfrom ..utils import config\n",
        "datasets/text.py": "def clean():\n    from utils.config import load\n",
        "models/__init__.py": "from models.qcd import Model\n",
        "models/qcd.py": "import datasets.loader\nfrom models import helpers\nfrom datasets import Loader\n",
        "models/helpers.py": "",
        "entry.py": "import models.qcd as qcd\nimport torch.nn\n",
        "tests/test_x.py": "import entry\n",
        ".venv/lib/site.py": "import entry\n",
        "outputs/run.py": "import entry\n",
    })
    edges = import_edges(str(tmp_path))
    assert _pairs(edges) == {
        ("datasets", "datasets.loader"),                  # lazy export through importlib
        ("datasets.loader", "datasets.text"),             # from . import submodule, and from .module import name
        ("datasets.loader", "utils.config"),              # relative import two levels up
        ("datasets.text", "utils.config"),                # inside a function
        ("models", "models.qcd"),
        ("models.qcd", "datasets.loader"), ("models.qcd", "models.helpers"), ("models.qcd", "datasets"),
        ("entry", "models.qcd"),
    }
    lines = {(e.importer, e.imported): (e.path, e.line) for e in edges}
    assert lines[("datasets.text", "utils.config")] == (os.path.join("datasets", "text.py"), 2)
    assert cycles(edges) == [] and backward_edges(edges) == [] and entry_imports(edges) == []


def test_checker_finds_a_circle_and_names_its_lines(tmp_path):
    _write_tree(tmp_path, {
        "models/__init__.py": "",
        "models/a.py": "import os\nfrom models.b import f\n",
        "models/b.py": "def f():\n    from models import c\n",
        "models/c.py": "import models.a\n",
        "models/d.py": "import models.a\n",
    })
    found = cycles(import_edges(str(tmp_path)))
    assert len(found) == 1
    assert [(e.importer, e.imported) for e in found[0]] == [
        ("models.a", "models.b"), ("models.b", "models.c"), ("models.c", "models.a")]
    assert [_describe(e) for e in found[0]][:2] == [
        f"{os.path.join('models', 'a.py')}:2: models.a imports models.b",
        f"{os.path.join('models', 'b.py')}:2: models.b imports models.c"]


def test_checker_finds_backward_and_entry_imports(tmp_path):
    _write_tree(tmp_path, {
        "utils/__init__.py": "",
        "utils/log.py": "",
        "datasets/__init__.py": "",
        "datasets/loader.py": "from models.families import build_tokenizer\nfrom utils import log\n",
        "losses/__init__.py": "",
        "losses/mlm.py": "def f():\n    import models\n",
        "models/__init__.py": "",
        "models/families.py": "",
        "evaluate/__init__.py": "",
        "evaluate/run.py": "from engine.checks import preflight\n",
        "engine/__init__.py": "",
        "engine/checks.py": "from evaluation import extract\n",
        "evaluation.py": "import main_cross_domain_emb\nfrom utils import log\n",
        "main_cross_domain_emb.py": "",
    })
    edges = import_edges(str(tmp_path))
    assert _pairs(forbidden_edges(edges, {("datasets", "models"), ("losses", "models")})) == {
        ("datasets.loader", "models.families"), ("losses.mlm", "models")}
    assert _pairs(entry_imports(edges)) == {("engine.checks", "evaluation")}
    assert _pairs(backward_edges(edges)) == {
        ("datasets.loader", "models.families"), ("losses.mlm", "models"), ("evaluate.run", "engine.checks"),
        ("engine.checks", "evaluation")}
    assert cycles(edges) == []


def test_enumeration_check_finds_copies_and_missing_registries(tmp_path):
    _write_tree(tmp_path, {
        "losses/__init__.py": "",
        "losses/loss.py": "NEGATIVES = ('local', 'global')\nIGNORE = -100\n",
        "engine/__init__.py": "",
        "engine/checks.py": "from losses.loss import NEGATIVES\nCHOICES = {'negatives': NEGATIVES}\n"
                            "def f(x):\n    return x in ['global', 'local'] or x == {'local': 1, 'global': 2}\n",
        "engine/trainer.py": "OPTIMIZERS: dict = {'adam': 1, 'adamw': 2}\n",
    })
    enumerations = {("losses/loss.py", "NEGATIVES"): ("local", "global"),
                    ("engine/trainer.py", "OPTIMIZERS"): ("adam", "adamw"),
                    ("engine/tasks.py", "TASKS"): ("retrieval", "pretrain")}
    found, missing = enumeration_literals(str(tmp_path), enumerations)
    assert found == {("losses/loss.py", "NEGATIVES"): ["engine/checks.py:4", "losses/loss.py:1"],
                     ("engine/trainer.py", "OPTIMIZERS"): [], ("engine/tasks.py", "TASKS"): []}
    assert missing == [("engine/tasks.py", "TASKS")]
    assert ignore_index_literals(str(tmp_path)) == ["losses/loss.py:2"]


# ----------------------------------------------------------------------------- licence and citation

def _readme_citation_title():
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        section = f.read().split("## Citation", 1)[1]
    return re.search(r"^\s*title\s*=\s*\{(.+?)\},?\s*$", section, re.MULTILINE).group(1)


def test_citation_file_names_the_paper_of_the_readme():
    with open(os.path.join(REPO_ROOT, "CITATION.cff"), encoding="utf-8") as f:
        cff = yaml.safe_load(f)
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    paper = cff["preferred-citation"]
    assert paper["title"].casefold() == _readme_citation_title().casefold()
    assert paper["year"] == 2023
    assert [a["family-names"] for a in paper["authors"]] == ["Chen", "Zhong", "He", "Peng", "Cheng"]


def test_licence_is_mit():
    with open(os.path.join(REPO_ROOT, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
