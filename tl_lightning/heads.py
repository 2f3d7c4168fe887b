"""Task heads put on top of a backbone's pooled features.

A head maps ``(batch, in_features)`` features to ``(batch, num_classes)`` logits. It is a plain
``nn.Module`` so it can be used with any backbone, and it always trains at ``head_lr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from tl_lightning.errors import ConfigurationError, UnknownNameError, did_you_mean

__all__ = ["LinearHead", "MLPHead", "create_head", "HEAD_KINDS"]

HEAD_KINDS = ("linear", "mlp")
_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _check_dims(in_features: int, num_classes: int, dropout: float) -> None:
    if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features <= 0:
        raise ConfigurationError(f"in_features must be a positive int, got {in_features!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
        raise ConfigurationError(f"num_classes must be a positive int, got {num_classes!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigurationError(f"dropout must be in [0, 1), got {dropout!r}")


class LinearHead(nn.Module):
    """Dropout (optional) then one linear layer.

    Args:
        in_features: Size of the backbone features (``backbone.feature_dim``).
        num_classes: Number of output logits.
        dropout: Dropout probability applied to the features; 0 disables it.

    Example:
        >>> import torch
        >>> LinearHead(16, 3, dropout=0.1)(torch.randn(4, 16)).shape
        torch.Size([4, 3])
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_dims(in_features, num_classes, dropout)
        self.in_features = in_features
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(x))


class MLPHead(nn.Module):
    """A small MLP: ``[Linear -> activation -> dropout] * len(hidden)`` then a linear classifier.

    Args:
        in_features: Size of the backbone features.
        num_classes: Number of output logits.
        hidden: Hidden layer sizes, input -> output; must be non-empty.
        dropout: Dropout after each hidden activation (and on the input features).
        activation: ``"gelu"``, ``"relu"``, ``"silu"`` or ``"tanh"``.

    Example:
        >>> import torch
        >>> head = MLPHead(16, 3, hidden=(32, 8), dropout=0.1)
        >>> head(torch.randn(4, 16)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (512,),
        dropout: float = 0.0,
        activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu",
    ) -> None:
        super().__init__()
        _check_dims(in_features, num_classes, dropout)
        hidden = tuple(hidden)
        if not hidden:
            raise ConfigurationError("MLPHead needs at least one hidden size, got hidden=(); use LinearHead instead")
        bad = [h for h in hidden if not isinstance(h, int) or isinstance(h, bool) or h <= 0]
        if bad:
            raise ConfigurationError(f"hidden sizes must be positive ints, got {list(hidden)!r}")
        if activation not in _ACTIVATIONS:
            raise UnknownNameError(
                f"unknown activation {activation!r}{did_you_mean(activation, _ACTIVATIONS)} "
                f"Choices: {sorted(_ACTIVATIONS)}"
            )
        self.in_features = in_features
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.mlp = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.mlp(x))


def create_head(
    kind: Literal["linear", "mlp"],
    in_features: int,
    num_classes: int,
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
) -> nn.Module:
    """Build a head by kind.

    Args:
        kind: ``"linear"`` (``hidden`` must be empty) or ``"mlp"`` (``hidden`` defaults to
            ``(512,)`` when empty).
        in_features: Size of the backbone features.
        num_classes: Number of output logits.
        hidden: Hidden sizes of the MLP.
        dropout: Dropout probability.

    Example:
        >>> type(create_head("mlp", 16, 2, hidden=(8,))).__name__
        'MLPHead'
    """
    if kind == "linear":
        if hidden:
            raise ConfigurationError(
                f"head 'linear' takes no hidden sizes, got hidden={list(hidden)!r}; use head='mlp' for hidden layers"
            )
        return LinearHead(in_features, num_classes, dropout=dropout)
    if kind == "mlp":
        return MLPHead(in_features, num_classes, hidden=tuple(hidden) or (512,), dropout=dropout)
    raise UnknownNameError(f"unknown head kind {kind!r}{did_you_mean(str(kind), HEAD_KINDS)} Choices: {list(HEAD_KINDS)}")
