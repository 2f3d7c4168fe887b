"""The one grouping engine: a :class:`LayerSpec` (data) in, checked :class:`LayerGroup` objects out.

Which parameters form which layer group, which ones are the task head and which take no
weight decay is *declared* as data, the way timm's ``group_matcher`` declares it:

* a model family (timm, torchvision, transformers, or a user's own family registered with
  :func:`~tl_lightning.backbones.register_family`) turns one of its models into a
  :class:`LayerSpec`: ``(group name, [parameter names])`` input -> output, the head's parameter
  prefixes and the no-weight-decay names;
* :func:`spec_from_prefixes`, :func:`spec_from_patterns` and :func:`spec_by_children` build
  specs from module prefixes, regexes or a module's children;
* :func:`build_layer_groups` is the only place that turns a spec into ``LayerGroup`` objects:
  it derives missing names, makes names unique, attaches the modules wholly inside each group
  (BatchNorm handling needs them), marks the head, resolves weight decay and checks the contract
  (named, unique, disjoint, covering every parameter).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from tl_lightning.backbones._base import LayerGroup, check_layer_groups
from tl_lightning.backbones._naming import group_name_from_params
from tl_lightning.errors import ConfigurationError, LayerGroupError

__all__ = [
    "LayerGroups",
    "LayerSpec",
    "build_layer_groups",
    "spec_from_prefixes",
    "spec_from_patterns",
    "spec_by_children",
    "unique_names",
    "SPLIT_SHARE",
]

#: A container child holding more than this share of a module's parameters is split into its
#: children by :func:`spec_by_children` (announced in :attr:`LayerSpec.notes`).
SPLIT_SHARE = 0.5


@dataclass(frozen=True)
class LayerSpec:
    """How one model splits into layer groups, as data.

    Attributes:
        groups: ``(name, [parameter names])`` input -> output. ``name`` may be ``None``: it is
            then derived from the parameter names (``layer1.0.conv1.weight`` ... -> ``layer1``).
            Parameter names are relative to the module the spec describes.
        head: Parameter-name prefixes of the model's task head (``"fc"``, ``"head.fc"``,
            ``"classifier"``): those parameters form the head group, marked ``is_head``.
        no_weight_decay: Parameter names (or prefixes at a ``.`` boundary) exempt from weight
            decay besides 1-d tensors, as the model declares them (timm's ``no_weight_decay()``).
        notes: Decisions a user should see (a big container split into its blocks, ...).
        adapter_targets: Module names (relative to the module the spec describes) of the layers
            adapters such as LoRA target by default: the attention projections of transformer
            blocks (``blocks.0.attn.qkv``). Empty when the family declares none.
    """

    groups: Sequence[tuple[str | None, Sequence[str]]]
    head: Sequence[str] = ()
    no_weight_decay: Collection[str] = ()
    notes: Sequence[str] = field(default_factory=tuple)
    adapter_targets: Sequence[str] = ()


class LayerGroups(list):
    """A list of :class:`LayerGroup` that also carries the grouping's notes.

    Attributes:
        notes: Decisions a user should see (``'features' holds 81% of the parameters: split
            into its 9 blocks``); :func:`~tl_lightning.describe_layer_groups` prints them.
    """

    def __init__(self, groups: Sequence[LayerGroup] = (), notes: Sequence[str] = ()) -> None:
        super().__init__(groups)
        self.notes: tuple[str, ...] = tuple(notes)


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def unique_names(names: Sequence[str]) -> list[str]:
    """``["a", "a", "b"]`` -> ``["a", "a_2", "b"]``: the one place names are made unique."""
    taken: set[str] = set()
    out = []
    for base in names:
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        out.append(name)
    return out


def spec_from_prefixes(
    module: nn.Module,
    groups: Sequence[tuple[str, Sequence[str]]],
    *,
    rest: str | None = "by_child",
    head: Sequence[str] = (),
    no_weight_decay: Collection[str] = (),
) -> LayerSpec:
    """A spec from module prefixes: a parameter joins the first group with a prefix it is under.

    Args:
        module: The module described.
        groups: ``(name, [module prefixes])`` input -> output (``"layer1"`` covers
            ``layer1.0.conv1.weight`` but not ``layer10.weight``).
        rest: Parameters under no prefix: ``"by_child"`` gives one group per top-level child
            (in model order, after the others), a name puts them all in one last group,
            ``None`` leaves them out (the engine then reports them).
        head: Head prefixes (passed through to the spec).
        no_weight_decay: Passed through to the spec.
    """
    buckets: dict[str, list[str]] = {g: [] for g, _ in groups}
    leftovers: dict[str, list[str]] = {}
    for pname, _ in module.named_parameters():
        for gname, prefixes in groups:
            if any(_under(pname, pre) for pre in prefixes):
                buckets[gname].append(pname)
                break
        else:
            key = pname.split(".")[0] if rest == "by_child" else str(rest)
            leftovers.setdefault(key, []).append(pname)
    named: list[tuple[str | None, Sequence[str]]] = [(g, buckets[g]) for g, _ in groups if buckets[g]]
    if rest is not None:
        named.extend(leftovers.items())
    return LayerSpec(named, head=tuple(head), no_weight_decay=tuple(no_weight_decay))


def spec_from_patterns(
    module: nn.Module, patterns: Sequence[tuple[str, str]] | Mapping[str, str], rest: str | None = None
) -> LayerSpec:
    """A spec from ``(group name, regex)`` pairs; the first regex that ``re.search``-es a name wins.

    Raises:
        ConfigurationError: a regex does not compile, or no pattern is given.
        LayerGroupError: a regex matches no parameter (a typo would silently empty a group),
            names repeat, or parameters match nothing and ``rest`` is ``None``.
    """
    items = list(patterns.items()) if isinstance(patterns, Mapping) else [tuple(p) for p in patterns]
    if not items:
        raise ConfigurationError("layer group patterns are empty; give at least one (group name, regex) pair")
    names = [g for g, _ in items] + ([rest] if rest is not None else [])
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LayerGroupError(f"duplicate layer group names {dupes} in patterns; names must be unique")
    compiled = []
    for gname, pattern in items:
        try:
            compiled.append((gname, re.compile(pattern)))
        except re.error as err:
            raise ConfigurationError(f"layer group {gname!r}: invalid regex {pattern!r}: {err}") from err
    buckets: dict[str, list[str]] = {g: [] for g, _ in items}
    unmatched: list[str] = []
    all_names = [n for n, _ in module.named_parameters()]
    for pname in all_names:
        for gname, rx in compiled:
            if rx.search(pname):
                buckets[gname].append(pname)
                break
        else:
            unmatched.append(pname)
    empty = [f"{g}: {p!r}" for g, p in items if not buckets[g]]
    if empty:
        raise LayerGroupError(
            f"layer group pattern(s) match no parameter of {type(module).__name__}: {empty}. "
            f"Parameter names look like {all_names[:5]}"
        )
    named: list[tuple[str | None, Sequence[str]]] = [(g, buckets[g]) for g, _ in items]
    if unmatched:
        if rest is None:
            raise LayerGroupError(
                f"{len(unmatched)} parameter(s) match no layer group pattern: {unmatched[:10]}"
                f"{' ...' if len(unmatched) > 10 else ''}. Fix: extend the patterns, or pass rest='<group name>' "
                "to collect them in a last group."
            )
        named.append((rest, unmatched))
    return LayerSpec(named)


def spec_by_children(module: nn.Module, split_share: float = SPLIT_SHARE) -> LayerSpec:
    """The fallback: bare parameters first (one group each), then one group per child with parameters.

    A container child (``nn.Sequential`` / ``nn.ModuleList`` / ``nn.ModuleDict``) holding more
    than ``split_share`` of the parameters is split into its own children, so
    ``Sequential(big trunk blocks...)`` is not one all-or-nothing group; the split is recorded
    in :attr:`LayerSpec.notes`.
    """
    total = sum(p.numel() for p in module.parameters()) or 1
    named: list[tuple[str | None, Sequence[str]]] = [(n, [n]) for n, _ in module.named_parameters(recurse=False)]
    notes: list[str] = []
    for cname, child in module.named_children():
        pnames = [f"{cname}.{n}" for n, _ in child.named_parameters()]
        if not pnames:
            continue
        share = sum(p.numel() for p in child.parameters()) / total
        grand = [(g, m) for g, m in child.named_children() if any(True for _ in m.parameters())]
        containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
        if isinstance(child, containers) and share > split_share and len(grand) > 1:
            named.extend((n, [n]) for n in (f"{cname}.{b}" for b, _ in child.named_parameters(recurse=False)))
            for gname, g in grand:
                named.append((f"{cname}.{gname}", [f"{cname}.{gname}.{n}" for n, _ in g.named_parameters()]))
            notes.append(
                f"{cname!r} holds {share:.0%} of the parameters: split into its {len(grand)} blocks "
                f"({cname}.{grand[0][0]} ... {cname}.{grand[-1][0]})"
            )
        else:
            named.append((cname, pnames))
    return LayerSpec(named, notes=tuple(notes))


def _attach_modules(module: nn.Module, owner: dict[str, int], n_groups: int) -> list[list[tuple[str, nn.Module]]]:
    """For each group, the outermost submodules all of whose parameters belong to it."""
    found: list[list[tuple[str, nn.Module]]] = [[] for _ in range(n_groups)]
    for mname, mod in module.named_modules():
        if not mname:
            continue
        pnames = [f"{mname}.{n}" for n, _ in mod.named_parameters()]
        if not pnames:
            continue
        owners = {owner.get(n) for n in pnames}
        if len(owners) == 1 and None not in owners:
            i = owners.pop()
            assert i is not None
            if not any(mname.startswith(m + ".") for m, _ in found[i]):
                found[i].append((mname, mod))
    return found


def _adapter_targets_by_group(
    module: nn.Module, names: Sequence[str], owner: dict[str, int], n_groups: int
) -> list[list[tuple[str, nn.Module]]]:
    """Declared adapter targets, each in the group that owns its parameters."""
    found: list[list[tuple[str, nn.Module]]] = [[] for _ in range(n_groups)]
    if not names:
        return found
    modules = dict(module.named_modules())
    for name in names:
        mod = modules.get(name)
        if mod is None:
            raise LayerGroupError(
                f"the layer spec declares adapter target {name!r}, which is not a module of {type(module).__name__}"
            )
        owners = {owner.get(f"{name}.{n}") for n, _ in mod.named_parameters()}
        if len(owners) != 1 or None in owners:
            raise LayerGroupError(
                f"adapter target {name!r} must lie inside one layer group (its parameters are in {len(owners)})"
            )
        i = owners.pop()
        assert i is not None
        found[i].append((name, mod))
    return found


def build_layer_groups(module: nn.Module, spec: LayerSpec, prefix: str = "", check: bool = True) -> LayerGroups:
    """Turn a :class:`LayerSpec` into checked layer groups: the grouping engine.

    Args:
        module: The module the spec describes.
        spec: Its layer spec.
        prefix: Prepended to every parameter and module name of the result (``"model"`` ->
            ``"model.layer1.0.conv1.weight"``), so groups built for ``pl_module.model`` name
            parameters as seen from ``pl_module``. Group names do not carry it.
        check: Check the contract (named, unique, disjoint, covering ``module``).

    Returns:
        The groups, input -> output; head groups (parameters under ``spec.head``) last; the
        spec's notes travel with them (:class:`LayerGroups`).
    """
    params = dict(module.named_parameters())
    heads = [h for h in spec.head if any(_under(n, h) for n in params)]
    body: list[tuple[str | None, list[str]]] = []
    head_names: list[str] = []
    whole_head_groups: list[str | None] = []  # spec groups that are entirely head
    for name, pnames in spec.groups:
        kept = [p for p in pnames if not any(_under(p, h) for h in heads)]
        head_names.extend(p for p in pnames if any(_under(p, h) for h in heads))
        if kept:
            body.append((name, kept))
        elif pnames:
            whole_head_groups.append(name)
    listed = {p for _, pns in spec.groups for p in pns}
    head_names.extend(p for p in params if p not in listed and any(_under(p, h) for h in heads))
    sections: list[tuple[str | None, list[str], bool]] = [(n, pns, False) for n, pns in body]
    if head_names:
        # named like the spec group it was ("fc", "classifier"), else like the head prefix
        if len(whole_head_groups) == 1 and whole_head_groups[0] and whole_head_groups[0] not in dict(body):
            label = whole_head_groups[0]
        else:
            label = heads[0] if len(heads) == 1 else "head"
        sections.append((label, sorted(set(head_names), key=list(params).index), True))
    all_names = list(params)
    derived: list[str] = []
    for i, (name, pnames, _) in enumerate(sections):
        derived.append(name if name else group_name_from_params(pnames, i, all_names))
    names = unique_names(derived)
    owner = {p: i for i, (_, pnames, _) in enumerate(sections) for p in pnames}
    modules = _attach_modules(module, owner, len(sections))
    no_decay_declared = tuple(spec.no_weight_decay)
    pre = prefix if not prefix or prefix.endswith(".") else prefix + "."
    targets = _adapter_targets_by_group(module, spec.adapter_targets, owner, len(sections))
    groups = []
    for i, (name, (_, pnames, is_head)) in enumerate(zip(names, sections)):
        exempt = frozenset(
            pre + p for p in pnames if params[p].ndim <= 1 or any(_under(p, d) for d in no_decay_declared)
        )
        groups.append(
            LayerGroup(
                name,
                tuple((pre + p, params[p]) for p in pnames),
                tuple((pre + m, mod) for m, mod in modules[i]),
                is_head=is_head,
                no_weight_decay=exempt,
                adapter_targets=tuple((pre + m, mod) for m, mod in targets[i]),
            )
        )
    if check:
        if not params:
            raise LayerGroupError(f"{type(module).__name__} has no parameters to group")
        check_layer_groups(module, groups)
    return LayerGroups(groups, spec.notes)
