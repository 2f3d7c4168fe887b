"""The search space of a sweep, written as Hydra override sweeps, turned into Optuna distributions.

The grammar is Hydra's own (https://hydra.cc/docs/advanced/override_grammar/extended/):

==========================================  ======================================================
``choice(16, 32, 64)`` or ``16,32,64``       categorical (ints, floats, strings, booleans, null)
``interval(0.5, 1.0)``                        float, uniform
``tag(log, interval(1e-5, 1e-2))``            float, log-uniform
``tag(int, interval(1, 8))``                  int, uniform (``tag(int, log, ...)``: log-uniform)
``range(1, 9, 2)``                            int with a step (floats: a float with a step)
==========================================  ======================================================

:func:`search_space` parses ``{key: sweep}`` pairs (the sweeper's ``params`` config plus sweep
overrides from the command line) into a :class:`SearchSpace`: the distributions, the fixed
overrides, and how a sampled value is written back as an override.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tl_lightning.errors import ConfigurationError

__all__ = ["SearchSpace", "search_space"]

_CATEGORICAL_TYPES = (bool, int, float, str, type(None))


@dataclass
class SearchSpace:
    """Distributions by parameter name (the override key) and the fixed overrides of every trial."""

    distributions: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    # categorical parameters: value -> the override text Hydra parsed it from
    rendered: dict[str, dict[Any, str]] = field(default_factory=dict)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The overrides of one trial: the fixed ones, then ``key=value`` for each sampled parameter."""
        out = list(self.fixed)
        for key, value in params.items():
            text = self.rendered.get(key, {}).get(value)
            if text is None:
                text = _render_number(value)
            out.append(f"{key}={text}")
        return out


def _render_number(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"a sampled value is not finite ({value}); check the search space bounds")
        return repr(value)
    return str(value)


def _distribution(key: str, override: Any) -> tuple[Any, dict[Any, str] | None]:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    sweep = override.value()
    tags = set(sweep.tags or ())
    unknown = tags - {"log", "int"}
    if unknown:
        raise ConfigurationError(
            f"search space {key}: unknown tag(s) {sorted(unknown)}; valid tags: 'log', 'int' "
            "(e.g. tag(log, interval(1e-5, 1e-2)))"
        )
    log = "log" in tags
    if isinstance(sweep, ChoiceSweep):
        values = list(sweep.list)
        bad = [v for v in values if not isinstance(v, _CATEGORICAL_TYPES)]
        if bad:
            raise ConfigurationError(
                f"search space {key}: choice values must be numbers, strings, booleans or null, got {bad[0]!r}. "
                "Fix: put each alternative in a config file and sweep over the config group instead"
            )
        texts = list(override.sweep_string_iterator())
        return CategoricalDistribution(values), dict(zip(values, texts))
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if low is None or high is None or not low < high:
            raise ConfigurationError(f"search space {key}: interval({low}, {high}) needs low < high")
        if "int" in tags:
            return IntDistribution(int(low), int(high), log=log), None
        return FloatDistribution(float(low), float(high), log=log), None
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        if start is None or stop is None or not start < stop:
            raise ConfigurationError(f"search space {key}: range({start}, {stop}) needs start < stop")
        if all(isinstance(v, int) for v in (start, stop, step)):
            # Hydra's range excludes stop, Optuna's high is included
            high = start + ((stop - 1 - start) // step) * step
            return IntDistribution(start, high, step=step, log=log and step == 1), None
        n = math.ceil((float(stop) - float(start)) / float(step)) - 1
        return FloatDistribution(float(start), float(start) + n * float(step), step=float(step)), None
    raise ConfigurationError(f"search space {key}: unsupported sweep {override.input_line!r}")


def search_space(params: Mapping[str, str] | None, arguments: Sequence[str], config_loader: Any = None) -> SearchSpace:
    """Parse the sweeper's ``params`` and the command-line overrides into a :class:`SearchSpace`.

    Args:
        params: ``{override key: sweep}`` from the sweeper config (``model.lr: tag(log, interval(1e-5, 1e-2))``).
        arguments: The command-line overrides; sweeps among them join (and win over) ``params``,
            the others are passed to every trial unchanged.
        config_loader: Hydra's config loader (lets the parser check config group names).

    Raises:
        ConfigurationError: A sweep cannot be an Optuna distribution (named, with the fix).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    parser = OverridesParser.create(config_loader=config_loader)
    space = SearchSpace()
    fixed: dict[str, str] = {}
    for override in parser.parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            dist, rendered = _distribution(key, override)
            space.distributions[key] = dist
            fixed.pop(key, None)
            if rendered is not None:
                space.rendered[key] = rendered
            else:
                space.rendered.pop(key, None)
        else:
            space.distributions.pop(key, None)
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
    space.fixed = list(fixed.values())
    return space
