"""The explainer registry: one vocabulary, old names accepted with a warning, typed checks."""

from __future__ import annotations

import warnings

import pytest

from napari_xaiclip.explain.registry import check_run, get_method, methods, parse_params

#: old name -> new name, per method: the names used before the vocabulary was unified
RENAMED = {
    "occlusion": {"patch": "window", "top_k": "top_percent"},
    "adaptive-occlusion": {"patch": "window", "top_k": "top_percent", "threshold": "refine_fraction"},
    "rise": {"n_masks": "n_samples", "grid": "cells", "normalise": "normalize"},
    "ig": {"nt_samples": "n_samples"},
    "causal": {"block": "window", "n_fillers": "n_samples", "threshold": "threshold_dice"},
}
EXAMPLE = {"window": 8, "top_percent": 50.0, "refine_fraction": 0.5, "n_samples": 10, "cells": 5,
           "normalize": False, "threshold_dice": 0.05}


@pytest.mark.parametrize("method,old,new", [(m, o, n) for m, r in RENAMED.items() for o, n in r.items()])
def test_an_old_name_still_works_with_a_warning(method, old, new):
    with pytest.warns(FutureWarning, match=rf"{method}.{old} is deprecated; use {method}.{new}"):
        assert get_method(method).check({old: EXAMPLE[new]}) == {new: EXAMPLE[new]}


def test_old_and_new_name_together_is_an_error():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"rise.n_samples given twice"):
            get_method("rise").check({"n_samples": 10, "n_masks": 20})


def test_the_same_idea_has_the_same_name_everywhere():
    names = {p.name for spec in methods().values() for p in spec.params}
    for old in ("patch", "block", "grid", "n_masks", "nt_samples", "n_fillers", "top_k", "normalise", "threshold"):
        assert old not in names, old


def test_every_default_passes_its_own_check():
    for spec in methods().values():
        assert spec.resolve({}) == spec.defaults(), spec.name


@pytest.mark.parametrize("given", ["12", 12.0, 12])
def test_integers_from_text_or_whole_floats(given):
    assert get_method("causal").param("n_screen").check(given, "causal") == 12


def test_an_integer_below_its_range_is_refused():
    with pytest.raises(ValueError, match=r"causal.n_screen must be >= 1, got -3"):
        get_method("causal").param("n_screen").check("-3", "causal")


def test_parse_params_then_check_run_types_cli_text():
    params = parse_params(["rise.n_samples=500", "rise.center=True", "occlusion.fill=blur"])
    assert check_run(["rise", "occlusion"], params) == {"rise": {"n_samples": 500, "center": True},
                                                         "occlusion": {"fill": "blur"}}
    with pytest.raises(ValueError, match=r"expected METHOD.NAME=VALUE"):
        parse_params(["rise-n_samples=5"])
    with pytest.raises(ValueError, match=r"parameters given for an unknown method 'shap'"):
        check_run(["rise"], {"shap": {"n": 1}})
    with pytest.raises(ValueError, match=r"no method given"):
        check_run([], {})
