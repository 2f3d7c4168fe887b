"""Hugging Face transformers backbones: ``hf:<hub id or local folder>``."""

from __future__ import annotations

from torch import nn

from tl_lightning.backbones._naming import group_name_from_params

__all__ = ["hf_param_groups"]


def hf_param_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Group a transformers model's parameter names: embeddings, each layer, what follows.

    The layers are the elements of the largest ``nn.ModuleList`` (by parameter count):
    ``encoder.layer`` (BERT, RoBERTa, ViT), ``transformer.layer`` (DistilBERT), ``layers``...
    Parameters that come before the first layer form ``embeddings``; those after the last layer
    form one group per top-level child (``pooler``, ``layernorm``, a task head ``classifier``).

    Returns:
        ``[(group name, [parameter names relative to model]), ...]`` input -> output; a model
        without any ``nn.ModuleList`` falls back to one group per top-level child.
    """
    from tl_lightning.backbones._auto import param_groups_by_children

    best, best_n = None, 0
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            n = sum(p.numel() for p in mod.parameters())
            if n > best_n:
                best, best_n = mname, n
    if best is None:
        return param_groups_by_children(model)
    names = [n for n, _ in model.named_parameters()]
    layer_of = {}
    for n in names:
        if n.startswith(best + "."):
            layer_of[n] = n[len(best) + 1 :].split(".")[0]
    inside = [i for i, n in enumerate(names) if n in layer_of]
    first, last = inside[0], inside[-1]
    named: list[tuple[str, list[str]]] = []
    before = [n for n in names[:first] if n not in layer_of]
    if before:
        named.append(("embeddings", before))
    layers: dict[str, list[str]] = {}
    for n in names:
        if n in layer_of:
            layers.setdefault(f"{best}.{layer_of[n]}", []).append(n)
    named.extend(layers.items())
    after: dict[str, list[str]] = {}
    for n in names[first:]:
        if n not in layer_of:
            after.setdefault(n.split(".")[0], []).append(n)
    # name after-groups at the depth of the layer list's parent: "pooler", "bert.pooler", "classifier"
    depth = max(1, len(best.split(".")) - 1)
    taken = {g for g, _ in named}
    for pns in after.values():
        full = group_name_from_params(pns, len(named), set())
        name = base = ".".join(full.split(".")[:depth])
        k = 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        named.append((name, pns))
    return named
