"""Checkers of notebook 06's exercises: a submission broken on purpose, and the blend's worst case."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from conserviz_utils.errors import SubmissionError
from conserviz_utils.metrics import EPS
from conserviz_utils.teaching.exercises.results import checker, close, correct, hint, kind_of, read_number

BROKEN = "Exercise 1 · break a submission"
WORST = "Exercise 2 · the worst case after blending"


@checker(BROKEN, "a broken copy of `submission`, a DataFrame", placeholder="a broken copy of the submission")
def check_broken_submission(broken, submission_format: pd.DataFrame):
    """Exercise 06·1: a copy of the submission broken on purpose, which ``validate_submission`` must refuse.

    Only a frame sharing ids or species columns with ``submission_format`` counts: a string is refused
    too, but it is not the mistake the exercise is about.
    """
    from conserviz_utils.submission import validate_submission

    if not isinstance(broken, pd.DataFrame):
        return hint(BROKEN, f"that is {kind_of(broken)}, not a submission at all; start from a "
                            "copy of the DataFrame (broken = submission.copy()) and damage it")
    shares_columns = len(set(map(str, broken.columns)) & set(map(str, submission_format.columns)))
    shares_ids = len(broken.index.intersection(submission_format.index))
    if not shares_columns and not shares_ids and not broken.empty:
        return hint(BROKEN, "that frame shares no id and no species column with the submission; "
                            "start from broken = submission.copy() and damage it")
    if broken.empty and not shares_columns:
        return hint(BROKEN, "that frame is empty; start from broken = submission.copy() and damage it")
    try:
        validate_submission(broken, submission_format)
    except SubmissionError as refusal:
        fix = f" The fix it suggests: {refusal.fix}" if refusal.fix else ""
        return correct(BROKEN, f"validate_submission refused it: {refusal.problem}.{fix}")
    return hint(BROKEN, "validate_submission still accepts it, so the competition would too; "
                        "break it more: drop a row, swap two columns, or set one probability to 2")


@checker(WORST, "the largest log loss one image can cost after blending, one number",
         placeholder="the largest log loss one image can cost after blending")
def check_worst_case_cost(answer, submission: pd.DataFrame, weight: float = 0.9):
    """Exercise 06·2: −ln of the smallest value of ``weight * submission + (1 - weight) / species``."""
    value = read_number(WORST, answer, "cost")
    values = submission.to_numpy(dtype=float)
    classes = values.shape[1]
    smallest, largest = float(values.min()), float(values.max())
    floor = (1 - weight) / classes
    blended = weight * smallest + floor
    right = -math.log(blended)
    before = -math.log(max(smallest, EPS))
    if close(value, right):
        return correct(WORST, f"the smallest probability is now {blended:.4f}, so no image can cost more than −ln "
                              f"{blended:.4f} = {right:.2f}, against {before:.1f} before blending; confident right "
                              "answers pay a little for that insurance")
    if close(value, right / math.log(10)):
        return hint(WORST, "that is the base-10 logarithm; log loss uses the natural one")
    if close(value, -right):
        return hint(WORST, "a cost is −log p, positive: flip the sign")
    if close(value, blended) or close(value, 100 * blended):
        return hint(WORST, "that is the smallest probability itself; an image given it costs −log of it")
    if close(value, before):
        return hint(WORST, "that is the worst case of the submission before blending")
    if close(value, -math.log(weight * smallest + (1 - weight))):
        return hint(WORST, f"the uniform part gives each species (1 − {weight:g}) / {classes}, not (1 − {weight:g})")
    if close(value, -math.log((1 - weight) * smallest + weight / classes)):
        return hint(WORST, f"the weights are swapped: {weight:g} goes to the submission and "
                           f"{1 - weight:g} to the uniform 1/{classes}")
    if smallest > 0 and close(value, -math.log(floor)):
        return hint(WORST, f"that is −ln of the uniform part alone, (1 − {weight:g}) / {classes}; "
                           f"the blend adds {weight:g} × the submission's own smallest probability")
    if close(value, -math.log(weight * largest + floor)):
        return hint(WORST, "that is −ln of the largest probability, the best case; the worst case "
                           "is the smallest one")
    mean_min = float(np.mean(weight * values.min(axis=1) + floor))
    if close(value, -math.log(mean_min)) or close(value, float(np.mean(-np.log(weight * values.min(axis=1) + floor)))):
        return hint(WORST, "that averages over the images; the worst case is the single smallest "
                           "probability anywhere in the blend")
    return hint(WORST, "not quite: blend, find the smallest probability anywhere in it, and take −ln of it")
