"""The recipe parser on random input: any mapping, any step, any override string either resolves or raises a
ConfigError (one line, naming what is wrong); never another exception, never a silent default."""

from __future__ import annotations

import math
import os

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from netcompress.core.errors import ConfigError
from netcompress.core.methods import METHODS, _ensure_registered
from netcompress.recipes import apply_overrides, resolve_recipe

_ensure_registered()
EXAMPLES = int(os.environ.get("NETCOMPRESS_FUZZ_EXAMPLES", "200"))
KEYS = sorted(
    {f for k in METHODS.names() for f in METHODS.get(k).config.field_names()}
    | {"op", "method", "label", "bogus", "", "epochs ", "Ratio"}
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(-2, 2),
    st.sampled_from([float("nan"), float("inf"), -float("inf")]),
    st.text(max_size=6),
    st.sampled_from(["l1", "global", "per_channel", "ste", "re:.*", "features.0", "cosine", "minmax"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=4,
)
ops = st.sampled_from(sorted({k.split("/")[0] for k in METHODS.names()} | {"prun", "train"}))
methods = st.sampled_from(sorted({k.split("/")[1] for k in METHODS.names()} | {"nope"}))
steps = st.builds(
    lambda op, method, fields: {"op": op, "method": method, **fields},
    ops,
    methods,
    st.dictionaries(st.sampled_from(KEYS), values, max_size=3),
)


def _check(recipe) -> str:
    try:
        resolved = resolve_recipe(recipe)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return "refused"
    for step in resolved["steps"]:  # resolved: every field present, no unknown key slipped through
        spec = METHODS.get(f"{step['op']}/{step['method']}")
        assert set(step) - {"op", "method", "label"} == set(spec.config.field_names())
    return "resolved"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(steps, min_size=1, max_size=3))
def test_random_steps_resolve_or_raise_config_errors(steps):
    recipe = {"model": {"name": "digits_cnn"}, "data": {"name": "digits"}, "steps": steps}
    event(_check(recipe))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    top=st.dictionaries(
        st.sampled_from(
            ["model", "data", "steps", "evaluate", "export", "report", "seed", "name", "sweep", "x"]
        ),
        values,
        max_size=4,
    )
)
def test_random_top_level_mappings_raise_config_errors(top):
    recipe = {"model": {"name": "digits_cnn"}, "data": {"name": "digits"}, "steps": [{"op": "train"}], **top}
    try:
        event(_check(recipe))
    except ConfigError:  # pragma: no cover - _check catches these
        raise


@settings(max_examples=EXAMPLES, deadline=None)
@given(overrides=st.lists(st.text(max_size=20), max_size=3))
def test_random_override_strings(overrides):
    base = {
        "model": {"name": "digits_cnn"},
        "data": {"name": "digits"},
        "steps": [{"op": "train", "epochs": 1}],
    }
    try:
        changed = apply_overrides(base, overrides)
    except ConfigError:
        event("refused")
        return
    event(_check(changed))


@st.composite
def own_field_steps(draw):
    """A real method with a few of its own fields set to random values: exercises value validation."""
    key = draw(
        st.sampled_from(
            [k for k in METHODS.names() if METHODS.get(k).config.__module__.startswith("netcompress.")]
        )
    )
    fields = METHODS.get(key).config.field_names()
    chosen = draw(st.lists(st.sampled_from(fields), max_size=3, unique=True))
    op, method = key.split("/")
    return {"op": op, "method": method, **{f: draw(values) for f in chosen}}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(step=own_field_steps())
def test_random_values_of_real_fields_resolve_or_raise_config_errors(step):
    recipe = {"model": {"name": "digits_cnn"}, "data": {"name": "digits"}, "steps": [step]}
    outcome = _check(recipe)
    event(outcome)
    if outcome == "resolved":  # nothing non-finite got through as a number
        for value in resolve_recipe(recipe)["steps"][0].values():
            assert not (isinstance(value, float) and not math.isfinite(value)), step
