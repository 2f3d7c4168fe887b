"""Which backbone, which strategy: the machinery of ``tl-rank`` and ``finetune=auto``.

Both answer from frozen features computed once through the cached-feature path
(:mod:`tl_lightning.features`), in a small fraction of the cost of fine-tuning:

* **Which backbone** (``tl-rank``): :func:`parse_candidates` reads candidate backbones (registry
  names, backbone configs, random-init controls), :func:`candidate_features` computes each one's
  features and source-classifier outputs, and
  :func:`~tl_lightning.transferability.rank_candidates` scores and ranks them.
* **Which strategy** (``finetune=auto``): :func:`measure` measures examples per class, a linear
  probe and LogME of the frozen features, the gain over random-init features, the shift of the
  target data from the pretraining statistics and the backbone's size;
  :func:`choose_strategy` applies the rule table (the seed's data size x domain similarity table
  plus measured overrides) and says why; :func:`successive_halving` races a shortlist for a short
  budget (``finetune.search=true``).

Example:
    >>> from tl_lightning.advisor import Measurements, choose_strategy
    >>> m = Measurements(n_train=300, num_classes=10, min_class_count=30, backbone_params=4_000_000,
    ...                  probe_accuracy=0.97, chance_accuracy=0.1, random_probe_accuracy=0.5, shift=0.05)
    >>> choose_strategy(m).strategy
    'feature_extraction'
"""

from tl_lightning.advisor.candidates import (
    Candidate,
    CandidateRun,
    candidate_features,
    parse_candidates,
    source_classifier,
)
from tl_lightning.advisor.domain import (
    BatchNormShift,
    TokenizerFertility,
    batchnorm_shift,
    tokenizer_fertility,
)
from tl_lightning.advisor.measurements import Measurements, measure
from tl_lightning.advisor.race import RaceResult, Rung, successive_halving
from tl_lightning.advisor.rules import STRATEGIES, Decision, RuleThresholds, choose_strategy

__all__ = [
    "STRATEGIES",
    "BatchNormShift",
    "Candidate",
    "CandidateRun",
    "Decision",
    "Measurements",
    "RaceResult",
    "RuleThresholds",
    "Rung",
    "TokenizerFertility",
    "batchnorm_shift",
    "candidate_features",
    "choose_strategy",
    "measure",
    "parse_candidates",
    "source_classifier",
    "successive_halving",
    "tokenizer_fertility",
]
