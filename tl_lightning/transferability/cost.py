"""What fine-tuning every candidate would cost, estimated from the feature extraction already measured.

``tl-rank`` must cost a small fraction (under 5%) of fine-tuning every candidate. Fine-tuning
is not run to find out; it is estimated from what ranking measures anyway: the time of one
forward batch of the backbone in eval mode (from the feature extraction).

One fine-tuning epoch is ``ceil(n_train / batch_size)`` training steps, each a forward and a
backward pass. The backward pass costs about twice the forward one (it computes the gradients
of both the activations and the weights, one matrix product each per layer), so a training step
is about ``train_step_factor = 3`` forward batches; validation adds ``ceil(n_val / batch_size)``
forward batches per epoch::

    seconds = epochs * (3 * ceil(n_train / B) + ceil(n_val / B)) * seconds_per_forward_batch

What this leaves out, on purpose, so the estimate is a lower bound of one fine-tuning run and
"ranking costs under 5% of it" is a conservative claim:

* data loading and augmentation (feature extraction decodes the same images once, fine-tuning
  once per epoch), the optimizer step, checkpointing and logging;
* the activation memory of training, which can force a smaller batch than extraction used;
* more than one run per candidate (learning-rate search, seeds).

What can make it an over-estimate: extraction in a lower precision or at a larger batch than
training would use; a frozen prefix (fine-tuning only the top layers skips most of the
backward pass, so give ``train_step_factor`` between 1 and 3 for partial fine-tuning).
"""

from __future__ import annotations

import math

from tl_lightning._checks import check_int, check_number

__all__ = ["fine_tune_cost_estimate"]


def fine_tune_cost_estimate(
    n_train: int,
    epochs: int,
    seconds_per_forward_batch: float,
    *,
    batch_size: int,
    n_val: int = 0,
    train_step_factor: float = 3.0,
) -> float:
    """Estimated seconds of fine-tuning one candidate, from its measured forward time.

    Args:
        n_train: Training samples.
        epochs: Fine-tuning epochs.
        seconds_per_forward_batch: Measured wall time of one forward batch of ``batch_size``
            samples in eval mode (e.g. feature-extraction time / number of batches).
        batch_size: Samples per batch, for both the measurement and fine-tuning.
        n_val: Validation samples evaluated once per epoch.
        train_step_factor: Cost of a training step in forward batches (forward + backward
            ~ 3 for full fine-tuning).

    Returns:
        Estimated seconds (a lower bound of one run, see the module docstring).

    Example:
        >>> fine_tune_cost_estimate(10_000, 10, 0.05, batch_size=100, n_val=2_000)
        160.0
    """
    n_train = check_int("n_train", n_train, low=1)
    epochs = check_int("epochs", epochs, low=1)
    seconds = check_number("seconds_per_forward_batch", seconds_per_forward_batch, low=0.0)
    batch_size = check_int("batch_size", batch_size, low=1)
    n_val = check_int("n_val", n_val, low=0)
    factor = check_number("train_step_factor", train_step_factor, low=0.0, low_open=True)
    forward_batches_per_epoch = factor * math.ceil(n_train / batch_size) + math.ceil(n_val / batch_size)
    return float(epochs * forward_batches_per_epoch * seconds)
