"""Checkers of notebook 05's exercises: one log loss by hand, a confident mistake, a confusion, blank."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from conserviz_utils.metrics import EPS
from conserviz_utils.teaching.exercises.results import (
    Refused,
    as_name,
    as_number,
    checker,
    close,
    correct,
    hint,
    not_a_name,
    read_number,
    species_of,
    unanswered,
)

ONE = "Exercise 1 · one prediction's log loss"
WRONG = "Exercise 2 · a confidently wrong submission"
# scikit-learn clips at the machine epsilon of the predictions' float type, not at 1e-15.
SKLEARN_EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps)}


def _clipped(probs: pd.DataFrame) -> pd.DataFrame:
    """The probabilities after the competition's clip and renormalisation."""
    rows = probs.astype(float).clip(EPS, 1 - EPS)
    return rows.div(rows.sum(axis=1), axis=0)


@checker(ONE, "the log loss of the image, one number")
def check_one_log_loss(answer, labels, probs: pd.DataFrame, image_id):
    """Exercise 05·1: the log loss of image ``image_id``'s prediction in ``probs`` by hand, −ln p(true species)."""
    if answer is None:
        return unanswered(ONE, f"the log loss of image {image_id}")
    value = read_number(ONE, answer, "the log loss", finite=False)
    species = species_of(labels)
    if image_id not in probs.index or image_id not in species.index:
        return hint(ONE, f"image {image_id!r} is not one of the eval images; set image_id = "
                         "probs.index[0] as the cell did")
    true = str(species.loc[image_id])
    row = _clipped(probs.loc[[image_id]]).iloc[0]
    p = float(row[true])
    right = -math.log(p)
    shown = round(p, 3)  # the notebook shows probabilities rounded to 3 decimals; −ln of that is right too
    if math.isinf(value) and value > 0:
        return hint(ONE, "−ln 0 is infinite: the probability you took is 0 (or rounded to 0); the model gave "
                         f"{true} a small but positive p, so use the unrounded probs.loc[image_id, true_species]")
    if math.isnan(value) or math.isinf(value):
        return hint(ONE, "your log loss is NaN or −inf: look for the log of a negative number or of 0 on the way")
    if close(value, right) or (shown > 0 and close(value, -math.log(shown))):
        return correct(ONE, f"the model gave the true species, {true}, p = {p:.3f}, so this image "
                            f"costs −ln {p:.3f} = {right:.3f}; a sure right answer costs 0 and an "
                            f"honest 1/{len(row)} costs {math.log(len(row)):.3f}")
    for base in (10, 2):
        if close(value, right / math.log(base)):
            return hint(ONE, f"that is the base-{base} logarithm; log loss uses the natural one (np.log, math.log)")
    if close(value, -right):
        return hint(ONE, "log loss is −log p: yours is negative, flip the sign")
    if close(value, p) or close(value, 100 * p):
        return hint(ONE, "that is the probability of the true species itself; log loss is −log of it")
    if close(value, -math.log(max(1 - p, EPS))):
        return hint(ONE, "that is −log(1 − p); log loss is −log p of the true species")
    predicted = str(row.idxmax())
    if predicted != true and close(value, -math.log(row[predicted])):
        return hint(ONE, f"that is −log of the most probable species' probability; use the true species, {true}")
    for other in row.index:
        if other not in (true, predicted) and close(value, -math.log(row[other])):
            return hint(ONE, f"that is −log of {other}'s probability; use the true species, {true}")
    ids = probs.index.intersection(species.index)
    if len(ids) > 1:
        rows = _clipped(probs.loc[ids])
        costs = [-math.log(rows.at[i, species[i]]) for i in ids if species[i] in rows.columns]
        if costs and close(value, float(np.mean(costs))):
            return hint(ONE, "that is the mean over all eval images; take the one image")
        if costs and close(value, float(np.sum(costs))):
            return hint(ONE, "that is the sum over all eval images; take the one image")
    return hint(ONE, f"not quite: find the probability the model gave image {image_id}'s true "
                     "species, then take −ln of it")


@checker(WRONG, "the log loss of the confidently wrong submission, one number",
         placeholder="the log loss of the confidently wrong submission")
def check_confidently_wrong(answer, labels):
    """Exercise 05·2: the log loss of a submission sure of a wrong species for every image of ``labels``.

    The competition clips every probability to [1e-15, 1 − 1e-15], so each image costs about −ln 1e-15 ≈ 34.5.
    """
    value = read_number(WRONG, answer, "the log loss", finite=False)
    classes = labels.shape[1] if isinstance(labels, pd.DataFrame) else species_of(labels).nunique()
    classes = max(int(classes), 2)
    images = len(labels)
    right = -math.log(EPS / (1 - EPS + (classes - 1) * EPS))
    uniform = math.log(classes)
    if math.isinf(value) and value > 0:
        return hint(WRONG, "the competition clips every probability to [1e-15, 1 − 1e-15] before the log, so one "
                           "zero cannot make the score infinite; clip first, or use log_loss(eval_labels, probs)")
    if math.isnan(value) or math.isinf(value):
        return hint(WRONG, "your log loss is NaN or −inf: the log of 0 or of a negative number got "
                           "in; use log_loss(eval_labels, wrong), which clips first")
    if close(value, right):
        return correct(WRONG, f"every image costs −ln 1e-15 ≈ {right:.1f} after clipping, "
                              f"{right / uniform:.0f} times the uniform baseline's {uniform:.3f}: "
                              "one confident mistake outweighs dozens of good guesses")
    for dtype, eps in SKLEARN_EPS.items():
        if close(value, -math.log(eps)):
            return hint(WRONG, f"that is scikit-learn's log_loss on {dtype} probabilities: it clips "
                               f"at {eps:.1e}, the competition at 1e-15; score with conserviz's "
                               "log_loss (from conserviz_utils.metrics)")
    if close(value, right / math.log(10)):
        return hint(WRONG, "that is the base-10 logarithm; log loss uses the natural one")
    if value < 0:
        return hint(WRONG, "log loss is −log p, never negative: flip the sign")
    if close(value, 0.0):
        return hint(WRONG, "0 is a perfect score; a confidently wrong submission is the worst one")
    if close(value, 1.0):
        return hint(WRONG, "that is the error rate (every image wrong); the question asks for the log loss")
    if close(value, uniform):
        return hint(WRONG, "that is the uniform baseline, an honest 'don't know'; put all the "
                           "probability on a wrong species")
    if images > 1 and close(value, right * images):
        return hint(WRONG, f"that is the sum over the {images} images; log loss is the mean")
    if uniform < value < right:
        return hint(WRONG, "your submission still gives the true species some probability; put 1 "
                           "on a wrong species and 0 on every other, the true one included")
    return hint(WRONG, "not quite: build the probabilities (1 on a wrong species, 0 elsewhere) and "
                       "score them with log_loss(eval_labels, wrong)")


def _read_species(exercise: str, answer, probs: pd.DataFrame) -> str:
    """The answer as one of the probability columns, or "none"; else `Refused` with the hint saying why not."""
    guess = as_name(answer)
    if guess is None:
        if as_number(answer) is not None:
            raise Refused(hint(exercise, "that is a number (a count or a share?); give the species' name, "
                                         "a string like the probability columns"))
        raise Refused(not_a_name(exercise, answer, "the species"))
    if guess.lower() == "none":
        return "none"
    known = [str(c) for c in probs.columns]
    if guess in known:
        return guess
    same_letters = [c for c in known if c.lower() == guess.lower()]
    if same_letters:
        raise Refused(hint(exercise, f"check the upper and lower case: the species is written {same_letters[0]!r}"))
    raise Refused(hint(exercise, f"{guess!r} is not a species; use one of the probability columns "
                                 f"({', '.join(known)})"))


@checker("Exercise 3a · what a species is mistaken for", "one species name, a string")
def check_most_common_confusion(answer, labels, probs: pd.DataFrame, true_species: str):
    """Exercise 05·3a: the wrong species most often picked for ``true_species`` ("none" if never wrong)."""
    name = f"Exercise 3a · what {true_species} is mistaken for"
    if answer is None:
        return unanswered(name, f"the species most often predicted for true {true_species} images")
    species = species_of(labels).reindex(probs.index)
    predicted = probs.astype(float).idxmax(axis=1).astype(str)
    mistakes = predicted[(species == true_species) & (predicted != true_species)]
    guess = _read_species(name, answer, probs)
    n_true = int((species == true_species).sum())
    if mistakes.empty:
        if guess == "none":
            return correct(name, f"the model gets every one of the {n_true} {true_species} images right")
        return hint(name, f"the model never gets {true_species} wrong here; answer 'none'")
    counts = mistakes.value_counts()
    top = sorted(counts.index[counts == counts.max()])
    if guess in top:
        return correct(name, f"{int(counts[guess])} of the {n_true} {true_species} images are predicted {guess}; "
                             "the explorer shows which of them it was surest about")
    if guess == true_species:
        return hint(name, f"predicting {true_species} is right for those images; the question "
                          "asks which wrong species the model picks most")
    if guess == "none":
        return hint(name, f"the model does get some {true_species} images wrong; look at that row "
                          "of the confusion matrix")
    column = species[(predicted == true_species) & (species != true_species)].value_counts()
    tops_column = bool(len(column)) and guess in column.index[column == column.max()]
    if int(counts.get(guess, 0)):
        also = (f"; {guess} also tops the column of {true_species} (images predicted "
                f"{true_species}), which is the other direction" if tops_column else "")
        return hint(name, f"the model puts {int(counts[guess])} of the {n_true} {true_species} "
                          f"images in {guess}, but another species gets more: compare the counts "
                          f"along the row of true {true_species}{also}")
    if tops_column:
        return hint(name, f"you read a column of the confusion matrix: those are {guess} images predicted "
                          f"{true_species}; the question is about images that are {true_species} (its row)")
    return hint(name, f"the model never predicts {guess} for a {true_species} image; filter the "
                      f"explorer by true species {true_species} and count the predictions")


BLANK = "blank"
SWALLOWS = "Exercise 3b · what blank swallows"


@checker(SWALLOWS, "one species name, a string", placeholder="the species most common among the images predicted blank")
def check_blank_swallows(answer, labels, probs: pd.DataFrame):
    """Exercise 05·3b: the animal most common among the images predicted blank (its column, in counts; or "none")."""
    species = species_of(labels).reindex(probs.index)
    predicted = probs.astype(float).idxmax(axis=1).astype(str)
    guess = _read_species(SWALLOWS, answer, probs)
    to_blank = predicted == BLANK
    column = species[to_blank & (species != BLANK)].value_counts()
    n_predicted = int(to_blank.sum())
    if column.empty:
        if guess == "none":
            return correct(SWALLOWS, f"the model predicts blank for {n_predicted} image(s), none of them an animal")
        return hint(SWALLOWS, "the model never predicts blank for an animal here; answer 'none'")
    top = sorted(column.index[column == column.max()])
    shares = to_blank.groupby(species).mean().drop(BLANK, errors="ignore")
    if guess in top:
        n_true = int((species == guess).sum())
        return correct(SWALLOWS, f"{int(column[guess])} of the {n_predicted} images predicted blank "
                                 f"are {guess} ({int(column.sum())} animals in all): blank swallows "
                                 f"{column[guess] / n_true:.0%} of the {n_true} {guess} eval images")
    if guess == BLANK:
        return hint(SWALLOWS, "images that are blank and predicted blank are right answers; the "
                              "question asks which animal the model most often calls blank")
    if guess == "none":
        return hint(SWALLOWS, f"the model does predict blank for {int(column.sum())} animal "
                              "image(s); look at the blank column of the confusion matrix")
    count = int(column.get(guess, 0))
    # The shares table shows 2 decimals: a share that ties the largest as shown is that slip too.
    if count and round(float(shares.get(guess, 0.0)), 2) == round(float(shares.max()), 2):
        return hint(SWALLOWS, f"blank takes the largest share of {guess}'s own images ({shares[guess]:.0%}), but "
                              "that is a share of each row, as the confusion matrix shows it; the question asks "
                              "which species is most common among the images predicted blank: count them")
    mistaken = predicted[(species == BLANK) & (predicted != BLANK)].value_counts()
    tops_row = bool(len(mistaken)) and guess in mistaken.index[mistaken == mistaken.max()]
    if count:
        also = (f"; {guess} also tops the row of blank (blank images predicted {guess}), which "
                "is the other direction" if tops_row else "")
        return hint(SWALLOWS, f"the model predicts blank for {count} {guess} image(s), but another species is more "
                              f"common among the images predicted blank: count down the blank column{also}")
    if tops_row:
        return hint(SWALLOWS, f"you read the row of blank: those are blank images predicted "
                              f"{guess}; the question is about images predicted blank (its column)")
    return hint(SWALLOWS, f"the model never predicts blank for a {guess} image; look down the blank "
                          "column of the confusion matrix and count each true species")
