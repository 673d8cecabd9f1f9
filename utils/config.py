"""YAML experiment configs: `_base_` inheritance, typed `key.sub=value` overrides, strict keys.

`configs/base.yaml` is the schema: every key a run may set is declared there, with its
type given by its default (`null` is accepted only where the default is null). A mapping
declared as `{}` in the schema is free-form: its content is not checked, and later files and
overrides add to it key by key. Every other config inherits from it, directly or through
`_base_` chains, and may only set keys the schema knows.
"""
import copy
import difflib
import os
import re

import yaml

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "base.yaml")


class ConfigError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.1 wants `1.0e-4`) and refuses a key given twice in one
    mapping (PyYAML keeps the last silently, so the first line would look set and be ignored)."""

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            line = key_node.start_mark.line + 1
            if key in first:
                raise ConfigError(f"{key_node.start_mark.name}: key '{key_node.value}' is set twice, on lines "
                                  f"{first[key]} and {line}: keep one")
            first[key] = line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.inf|\.nan)$""", re.X),
    list("-+0123456789."),
)


def _read_yaml(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _key_lines(path):
    """1-based line of every dotted key path in a YAML file, so errors can point at it."""
    with open(path, encoding="utf-8") as f:
        root = yaml.compose(f, Loader=_Loader)
    lines = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[prefix + str(k.value)] = k.start_mark.line + 1
                walk(v, prefix + str(k.value) + ".")

    walk(root, "")
    return lines


def _load_chain(path, seen=()):
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: circular _base_ chain: {' -> '.join(seen + (path,))}")
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    if base is None:
        return [(path, data)]
    base_path = os.path.join(os.path.dirname(path), base)
    return _load_chain(base_path, seen + (path,)) + [(path, data)]


def flatten(tree, prefix=""):
    """(dotted key, value) of each setting of a nested config; a non-empty mapping is descended into, not yielded."""
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            yield from flatten(v, prefix + k + ".")
        else:
            yield prefix + k, v


def _known_keys(schema):
    """Every dotted key of the schema, the mappings' own keys too."""
    keys = set()
    for key, _ in flatten(schema):
        parts = key.split(".")
        keys.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return keys


def _unknown(key, schema_root, where):
    """Error for an unknown key, suggesting the closest sibling (or, failing that, any key)."""
    parent, _, leaf = key.rpartition(".")
    siblings = schema_root
    for p in parent.split(".") if parent else ():
        siblings = siblings[p]
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        suggestion = (parent + "." if parent else "") + close[0]
    else:
        close = difflib.get_close_matches(key, sorted(_known_keys(schema_root)), n=1, cutoff=0.6)
        suggestion = close[0] if close else None
    hint = f"; did you mean '{suggestion}'?" if suggestion else ""
    return ConfigError(f"{where}: unknown config key '{key}'{hint}")


def _check_type(key, default, value, where):
    """`value` for `key`, checked against the type of the schema's default (null only where the default is null)."""
    if default is None:
        return value
    if value is None:
        raise ConfigError(f"{where}: key '{key}' expects {type(default).__name__} (default {default!r}), got null")
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        value = str(value) if ok else value  # a string setting written as a number (pretrain.stage: 1)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where}: key '{key}' expects {type(default).__name__} (default {default!r}), got {value!r}")
    return value


def _merge(dst, src, schema, schema_root, where, lines=None, prefix=""):
    """Merge `src` into `dst`, checking keys and types against `schema`; `lines` maps keys to file lines."""
    for k, v in src.items():
        key = prefix + k
        loc = f"{where}:{lines[key]}" if lines and key in lines else where
        if k not in schema:
            raise _unknown(key, schema_root, loc)
        default = schema[k]
        if isinstance(default, dict) and default and isinstance(v, dict):
            _merge(dst[k], v, default, schema_root, where, lines, key + ".")
        elif isinstance(default, dict) and isinstance(v, dict):
            _deep_update(dst[k], v)  # a free-form mapping: merged key by key, contents unchecked
        else:
            dst[k] = copy.deepcopy(_check_type(key, default, v, loc))


def _deep_update(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def parse_value(text):
    """Parse a command-line value with YAML rules (`1e-4` is a float, `null` is None)."""
    try:
        return yaml.load(text, Loader=_Loader) if text != "" else ""
    except yaml.YAMLError:
        return text


# Settings holding a path: a relative one is taken from the directory the command was launched from
# (the launch scripts keep it), and config.yaml records it absolute.
PATH_KEYS = ("output_dir", "resume", "init_from", "data.root", "data.translations", "model.backbone.pretrained",
             "model.cope.text_pretrained", "eval.checkpoint", "eval.out_dir")
NOT_PATHS = (None, "auto")  # resume=auto is a mode, not a file


def _absolute_paths(cfg):
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        if node[leaf] not in NOT_PATHS and node[leaf] != "":
            node[leaf] = os.path.abspath(os.path.expanduser(node[leaf]))


def load_config(path, overrides=None):
    """Resolve `path` (with its `_base_` chain onto configs/base.yaml) and `key.sub=value` overrides;
    the relative paths of PATH_KEYS are made absolute against the current directory."""
    schema = _read_yaml(SCHEMA_PATH)
    schema.pop("_base_", None)
    cfg = copy.deepcopy(schema)
    for file_path, data in _load_chain(path):
        if os.path.abspath(file_path) != SCHEMA_PATH:
            _merge(cfg, data, schema, schema, file_path, _key_lines(file_path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value (for example train.epochs=2)")
        key, text = item.split("=", 1)
        node = {}
        parts = key.strip().split(".")
        leaf = node
        for p in parts[:-1]:
            leaf = leaf.setdefault(p, {})
        leaf[parts[-1]] = parse_value(text)
        _merge(cfg, node, schema, schema, "command line")
    cfg["config_path"] = os.path.abspath(path)
    _absolute_paths(cfg)
    return cfg


def save_config(cfg, path):
    """Write the resolved config (atomically) so a run's outputs say how they were made."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, allow_unicode=True, sort_keys=False)
    os.replace(tmp, path)
