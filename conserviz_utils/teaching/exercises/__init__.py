"""Self-checks for the notebooks' exercises: "correct" and why, or a hint that fits the slip.

Each exercise has one ``check_...(answer, ...)`` in its notebook's module (``ex01_explore`` …
``ex07_improve``). It computes the right answer from the data it is given and returns a
`CheckResult`: *correct* with why, *not yet* with a hint aimed at the usual slip (never the
answer itself), or *not answered yet* while the cell still holds ``None``. It never raises.
"""

from __future__ import annotations

from conserviz_utils.teaching.exercises.ex01_explore import check_busiest_site, check_site_species_shares
from conserviz_utils.teaching.exercises.ex02_split import check_share_shift, check_site_holdout
from conserviz_utils.teaching.exercises.ex03_model import check_frozen_trainable, check_softmax
from conserviz_utils.teaching.exercises.ex04_train import check_best_epoch, check_best_learning_rate, fresh_head
from conserviz_utils.teaching.exercises.ex05_evaluate import (
    check_blank_swallows,
    check_confidently_wrong,
    check_most_common_confusion,
    check_one_log_loss,
)
from conserviz_utils.teaching.exercises.ex06_submit import check_broken_submission, check_worst_case_cost
from conserviz_utils.teaching.exercises.ex07_improve import check_geometric_blend, check_member_weights
from conserviz_utils.teaching.exercises.results import CORRECT, NOT_ANSWERED, NOT_YET, CheckResult

__all__ = [
    "CORRECT", "NOT_ANSWERED", "NOT_YET", "CheckResult", "fresh_head",
    "check_best_epoch", "check_best_learning_rate", "check_blank_swallows", "check_broken_submission",
    "check_busiest_site", "check_confidently_wrong", "check_frozen_trainable", "check_geometric_blend",
    "check_member_weights", "check_most_common_confusion", "check_one_log_loss", "check_share_shift",
    "check_site_holdout", "check_site_species_shares", "check_softmax", "check_worst_case_cost",
]
