"""Readable layer-group names derived from parameter names."""

from __future__ import annotations

from collections.abc import Sequence


def _common_prefix(names: Sequence[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    prefix: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        prefix.append(level[0])
    return ".".join(prefix)


def group_name_from_params(param_names: Sequence[str], index: int, all_names: Sequence[str] | None = None) -> str:
    """Name a group after the modules its parameters live in.

    ``layer1.0.conv1.weight, layer1.1.bn2.bias`` -> ``layer1``; parameters spread over several
    top-level children -> ``blocks.5+norm``; the first such group -> ``stem``. (Names are made
    unique by the grouping engine, not here.) With ``all_names`` (every parameter name of the model), a trailing
    block index is dropped when the group holds the whole parent (a one-block stage is named
    ``layer1``, not ``layer1.0``).
    """
    by_child: dict[str, list[str]] = {}
    for n in param_names:
        by_child.setdefault(n.split(".")[0], []).append(n)
    pieces = []
    for child, names in by_child.items():
        lcp = _common_prefix(names)
        if all_names is not None:
            mine = set(names)
            while "." in lcp and lcp.rsplit(".", 1)[1].isdigit():
                parent = lcp.rsplit(".", 1)[0]
                if any(n.startswith(parent + ".") and n not in mine for n in all_names):
                    break
                lcp = parent
        pieces.append(lcp or child)
    name = pieces[0] if len(pieces) == 1 else "+".join(pieces)
    if index == 0 and len(pieces) > 1:
        name = "stem"
    return name
