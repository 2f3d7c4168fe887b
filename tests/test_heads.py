"""Heads: shapes, structure, argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tl_lightning.errors import ConfigurationError, UnknownNameError
from tl_lightning.heads import LinearHead, MLPHead, create_head


def test_linear_head_shape_and_dropout() -> None:
    head = LinearHead(16, 5, dropout=0.5)
    assert head(torch.randn(4, 16)).shape == (4, 5)
    assert isinstance(head.dropout, nn.Dropout) and head.dropout.p == 0.5
    assert isinstance(LinearHead(16, 5).dropout, nn.Identity)
    head.eval()
    x = torch.randn(3, 16)
    torch.testing.assert_close(head(x), head.fc(x))  # dropout off in eval


def test_mlp_head_layers() -> None:
    head = MLPHead(16, 3, hidden=(32, 8), dropout=0.1, activation="relu")
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 8), (8, 3)]
    assert sum(isinstance(m, nn.ReLU) for m in head.modules()) == 2
    out = head(torch.randn(4, 16))
    assert out.shape == (4, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_create_head_kinds() -> None:
    assert isinstance(create_head("linear", 8, 2), LinearHead)
    mlp = create_head("mlp", 8, 2, hidden=(4,), dropout=0.2)
    assert isinstance(mlp, MLPHead) and mlp.fc.in_features == 4
    assert create_head("mlp", 8, 2).fc.in_features == 512  # default hidden


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda: create_head("conv", 8, 2), UnknownNameError, "'conv'"),
        (lambda: create_head("linear", 8, 2, hidden=(4,)), ConfigurationError, "hidden"),
        (lambda: LinearHead(0, 2), ConfigurationError, "in_features"),
        (lambda: LinearHead(8, 0), ConfigurationError, "num_classes"),
        (lambda: LinearHead(8, 2, dropout=1.0), ConfigurationError, "dropout"),
        (lambda: MLPHead(8, 2, hidden=()), ConfigurationError, "LinearHead"),
        (lambda: MLPHead(8, 2, hidden=(4, -1)), ConfigurationError, "-1"),
        (lambda: MLPHead(8, 2, activation="gelu2"), UnknownNameError, "did you mean 'gelu'"),
    ],
)
def test_head_argument_errors(call, error, fragment) -> None:
    with pytest.raises(error, match=fragment):
        call()
