"""Which pretrained backbone? Transferability scores and a ranking, computed on frozen features.

Fine-tuning ten candidate backbones to find the best one costs ten fine-tuning runs. The
estimators here predict the outcome from one forward pass over the target training split
(the cached-feature path computes the features once per candidate), in seconds per candidate,
so that ranking costs a small fraction of fine-tuning every candidate (``tl-rank`` prints both
and must stay under 5%).

Estimators (every one: higher is better; deterministic; float64, except the linear probe that
fits in float32 by default; bad inputs raise
:class:`~tl_lightning.errors.DataError` / :class:`~tl_lightning.errors.ConfigurationError`
in one line that names the problem and the fix):

============================  ==========================================  ==================
function                      what it measures                            needs
============================  ==========================================  ==================
:func:`logme`                 log maximum evidence of a Bayesian linear   features, labels
                              model per class (You et al., ICML 2021)
:func:`leep`                  log-likelihood of the source classifier's   source softmax
                              outputs mapped to the target labels         outputs, labels
                              (Nguyen et al., ICML 2020)
:func:`nce`                   -H(target | source hard label)              source outputs or
                              (Tran et al., ICCV 2019)                    hard labels, labels
:func:`h_score`               tr(cov(f)^-1 cov(E[f|y])), Ledoit-Wolf      features, labels
                              shrinkage by default (Bao et al., ICIP
                              2019; Ibrahim et al., 2022)
:func:`linear_probe`          held-out accuracy of an L2 logistic         features, labels
                              regression (L-BFGS, L2 from a grid)         (+ val features)
============================  ==========================================  ==================

Ranges worth knowing when reading a table: LEEP and NCE are ``<= 0`` (0: the source labels
determine the target labels); NCE ``>= -log C``; the H-score lies in ``[0, C - 1]``; LogME is
a log-likelihood per sample (higher for features whose linear span explains the one-vs-rest
targets), comparable between backbones on the same data, not between datasets.

Each estimator module's docstring gives the formula, the paper, the deviations from the
authors' code and why. The tests check hand-computed values on small fixed matrices and the
properties the papers prove (LogME is the evidence maximum and rises when labels become a
linear function of the features; LEEP equals NCE for one-hot source outputs and does not
depend on the numbering of source classes; NCE is 0 when target labels are a function of
source labels; H-score bounds and invariances; random labels score low on every estimator).

Ranking (the core of ``tl-rank``, which adds the candidates' feature extraction and the CLI)::

    from tl_lightning.transferability import CandidateFeatures, rank_candidates, kendall_tau

    ranking = rank_candidates({
        "timm:resnet50": CandidateFeatures(train_features=f1, train_labels=y, source_probs=p1,
                                           feature_seconds=12.0, forward_seconds_per_batch=0.08,
                                           batch_size=64),
        "hf:google/vit-base-patch16-224-in21k": CandidateFeatures(f2, y, feature_seconds=30.0,
                                                                  forward_seconds_per_batch=0.2,
                                                                  batch_size=64),
    })
    print(ranking.to_markdown())        # table best first, notes, cost vs fine-tuning estimate
    json.dumps(ranking.to_json())       # plain dict
    ranking.plot("ranking.png")         # one PNG, a bar chart per score
    ranking.cost.fraction               # ranking seconds / estimated fine-tuning seconds
    kendall_tau(ranking, {"timm:resnet50": 0.91, "hf:...": 0.94})  # vs measured accuracies

The primary score is LogME by default (``primary=`` picks another; see
:mod:`tl_lightning.transferability.ranking` for why). The fine-tuning estimate
(:func:`fine_tune_cost_estimate`) is ``epochs x (3 x train batches + val batches) x measured
forward seconds per batch``: forward + backward is about three forwards; data loading,
augmentation and hyper-parameter search are left out, so it is a lower bound of one run.
"""

from tl_lightning.transferability.cost import fine_tune_cost_estimate
from tl_lightning.transferability.hscore import h_score, ledoit_wolf_shrinkage
from tl_lightning.transferability.kendall import kendall_tau, kendall_tau_b
from tl_lightning.transferability.leep import leep
from tl_lightning.transferability.linear_probe import DEFAULT_L2_GRID, LinearProbeResult, linear_probe
from tl_lightning.transferability.logme import LogMEFit, logme, logme_fit
from tl_lightning.transferability.nce import nce, source_labels_of
from tl_lightning.transferability.ranking import (
    COST_BUDGET,
    SCORE_LABELS,
    SCORE_NAMES,
    CandidateFeatures,
    CandidateScores,
    Ranking,
    RankingCost,
    rank_candidates,
)

__all__ = [
    "COST_BUDGET",
    "DEFAULT_L2_GRID",
    "SCORE_LABELS",
    "SCORE_NAMES",
    "CandidateFeatures",
    "CandidateScores",
    "LinearProbeResult",
    "LogMEFit",
    "Ranking",
    "RankingCost",
    "fine_tune_cost_estimate",
    "h_score",
    "kendall_tau",
    "kendall_tau_b",
    "ledoit_wolf_shrinkage",
    "leep",
    "linear_probe",
    "logme",
    "logme_fit",
    "nce",
    "rank_candidates",
    "source_labels_of",
]
