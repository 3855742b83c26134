"""The explainer registry: one :class:`MethodSpec` per method, declared in the method's own module.

Everything that lists methods or checks their parameters reads this table: the
Python API (:func:`~napari_xaiclip.explain.iter_explain`), the CLI and its help,
manifests and batch jobs, SegX's choice of base method and the GUI's parameter
form. Adding an explainer is one new module that defines ``SPEC`` plus its name
in :data:`BUILTIN_MODULES` (or one :func:`register` call from outside the package).

Parameter vocabulary, the same for every method:

* ``window`` / ``stride``: side and step of a sliding or tiled region, in model-input pixels;
* ``n_samples``: every count of random samples (masks, perturbations, noise draws, fillers);
* ``top_percent``: every kept share, as a percentage in (0, 100];
* thresholds carry their unit in the name (``threshold_dice``, ``refine_fraction``).

Old names are accepted for one release with a :class:`FutureWarning`.
"""

from __future__ import annotations

import ast
import importlib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BUILTIN_MODULES", "MethodSpec", "Param", "check_run", "parse_params", "get_method", "method_names", "methods",
           "register", "unregister"]

#: Modules of this package that each define ``SPEC`` (a :class:`MethodSpec`) or ``SPECS`` (several), in display order.
BUILTIN_MODULES = ("occlusion", "adaptive", "rise", "lime", "gradients", "causal", "segx")


@dataclass(frozen=True)
class Param:
    """One keyword parameter of an explainer.

    ``kind`` is int, float, bool, str or object (passed through unchecked).
    ``auto``: ``None`` (and the string "auto") mean "chosen from the input", e.g. a window of S / 16.
    ``low``/``high`` are inclusive bounds; ``choices`` the allowed strings (or a function returning them,
    for choices that depend on what is registered); ``gui=False`` hides it in
    the GUI form (values that only make sense from code, such as image banks); ``aliases`` are
    deprecated names.
    """

    name: str
    kind: type
    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple | Callable[[], tuple] = ()
    auto: bool = False
    gui: bool = True
    aliases: tuple[str, ...] = ()
    why_not: Callable[[Any], str] | None = None  # says why a value outside ``choices`` is refused

    def check(self, value, method: str):
        """``value`` converted to ``kind`` and range-checked; ValueError names ``method.name``."""
        if self.auto and (value is None or value == "auto"):
            return None if self.default is None else "auto"
        if self.kind is object:
            return value
        where = f"{method}.{self.name}"
        value = _convert(self.kind, value, where)
        options = self.options()
        if options and value not in options:
            why = self.why_not(value) if self.why_not else ""
            raise ValueError(f"{where} must be one of {', '.join(map(str, options))}, got {value!r}"
                             + (f": {why}" if why else ""))
        if self.low is not None and value < self.low:
            raise ValueError(f"{where} must be >= {self.low:g}, got {value!r}")
        if self.high is not None and value > self.high:
            raise ValueError(f"{where} must be <= {self.high:g}, got {value!r}")
        return value

    def options(self) -> tuple:
        return tuple(self.choices()) if callable(self.choices) else tuple(self.choices)

    def describe(self) -> str:
        shown = "auto" if self.auto and self.default in (None, "auto") else repr(self.default)
        return f"{self.name}={shown}" + (f" ({self.help})" if self.help else "")


def _convert(kind: type, value, where: str):
    if kind is bool:
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ValueError(f"{where} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise ValueError(f"{where} must be an integer, got {value!r}")
    if kind is float:
        try:
            out = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            out = math.nan
        if not math.isfinite(out):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        return out
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be text, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter kind {kind!r} for {where}")


@dataclass(frozen=True)
class MethodSpec:
    """An explainer as the rest of the package sees it.

    ``run(ctx, **params)`` is a generator of :class:`~napari_xaiclip.explain.base.Progress` returning an
    :class:`~napari_xaiclip.explain.base.Explanation`. Every map follows one sign convention: positive =
    the region supports the segmentation, negative = it hinders it; ``sign`` says how this method's map
    reads under it (shown in help and reports). ``counts`` names what ``n_patch`` counts (None: no patch grid); ``cost`` says what the
    forward passes are; ``segx_base`` whether SegX can build on it (``segx_refusal`` says why not).
    """

    name: str
    run: Callable
    params: tuple[Param, ...]
    summary: str
    sign: str = "positive = supports the segmentation, negative = hinders it"
    counts: str | None = None
    cost: str = ""
    segx_base: bool = True
    segx_refusal: str = ""
    gui: bool = True
    extras: dict = field(default_factory=dict)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def check(self, given: Mapping | None) -> dict:
        """The given parameters under their current names, converted and range-checked.

        Deprecated names are renamed with a FutureWarning; unknown names raise ValueError.
        """
        renamed = {alias: p.name for p in self.params for alias in p.aliases}
        out: dict = {}
        for key, value in dict(given or {}).items():
            if key in renamed:
                warnings.warn(f"{self.name}.{key} is deprecated; use {self.name}.{renamed[key]}", FutureWarning,
                              stacklevel=3)
                key = renamed[key]
            try:
                p = self.param(key)
            except KeyError:
                known = ", ".join(p.name for p in self.params) or "none"
                raise ValueError(f"unknown parameter {key!r} for {self.name}; known: {known}") from None
            if key in out:
                raise ValueError(f"{self.name}.{key} given twice (once under a deprecated name)")
            out[key] = p.check(value, self.name)
        return out

    def resolve(self, given: Mapping | None) -> dict:
        """Every parameter: the defaults overridden by the checked ``given`` ones."""
        return {**self.defaults(), **self.check(given)}

    def usage(self) -> str:
        return f"{self.name}: {self.summary} Parameters: " + (
            ", ".join(p.describe() for p in self.params) or "none") + "."


_REGISTRY: dict[str, MethodSpec] = {}
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        for spec in getattr(module, "SPECS", None) or (module.SPEC,):
            _REGISTRY.setdefault(spec.name, spec)


def register(spec: MethodSpec, replace: bool = False) -> MethodSpec:
    """Add an explainer; ValueError if the name is taken (unless ``replace``)."""
    _load_builtins()
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"an explainer named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _load_builtins()
    _REGISTRY.pop(name, None)


def methods() -> dict[str, MethodSpec]:
    """Every registered explainer by name, in registration order."""
    _load_builtins()
    return dict(_REGISTRY)


def method_names() -> tuple[str, ...]:
    return tuple(methods())


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``; ValueError listing the known methods otherwise."""
    table = methods()
    if name not in table:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(table)}")
    return table[name]


def check_run(method_list, params: Mapping | None) -> dict:
    """Check a run's methods and their ``{method: {name: value}}`` parameters before anything is computed.

    Returns the parameters under their current names, converted; ValueError names the method and parameter.
    """
    if not method_list:
        raise ValueError("no method given")
    for m in method_list:
        get_method(m)
    out = {}
    for m, given in dict(params or {}).items():
        if m not in methods():
            raise ValueError(f"parameters given for an unknown method {m!r}; methods: {', '.join(methods())}")
        out[m] = get_method(m).check(given)
    return out


def parse_params(items) -> dict:
    """``["rise.n_samples=500", "occlusion.window=32"]`` -> {"rise": {"n_samples": 500}, ...}."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"parameter {item!r}: expected METHOD.NAME=VALUE, e.g. rise.n_samples=500")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        out.setdefault(method, {})[name] = parsed
    return out
