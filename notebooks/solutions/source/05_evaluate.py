# Exercise cells of notebooks/05_evaluate.ipynb: the learner's placeholder and the worked solution
# of each. `make solutions` writes the placeholders into the notebook and the solutions into
# notebooks/solutions/05_evaluate.ipynb. Edit the exercises here, never in those notebooks.

# %% placeholder ex-05-one-loss
# YOUR CODE HERE: −ln of the probability the model gave this image's true species.
image_id = probs.index[0]
one_loss = None

check_one_log_loss(one_loss, eval_labels, probs, image_id)

# %% solution ex-05-one-loss
import math

image_id = probs.index[0]
true_species = eval_labels.loc[image_id].idxmax()
p_true = probs.loc[image_id, true_species]
one_loss = -math.log(p_true)  # the natural logarithm, as in the competition's metric
print(f"{image_id} is a {true_species}; the model gave it p = {p_true:.3f}")

result = check_one_log_loss(one_loss, eval_labels, probs, image_id)
assert result.passed, result
result

# %% placeholder ex-05-wrong
# YOUR CODE HERE: `wrong` = 1 on a wrong species for every image, 0 elsewhere; its log loss.
wrong_loss = None

check_confidently_wrong(wrong_loss, eval_labels)

# %% solution ex-05-wrong
import numpy as np
import pandas as pd

# Move each image's 1 to the next species column: sure of itself, and always wrong.
wrong = pd.DataFrame(
    np.roll(eval_labels.to_numpy(), 1, axis=1), index=eval_labels.index, columns=eval_labels.columns
)
wrong_loss = log_loss(eval_labels, wrong)

result = check_confidently_wrong(wrong_loss, eval_labels)
assert result.passed, result
result

# %% placeholder ex-05-confusion
# YOUR CODE HERE: the wrong species most often predicted for images that really are blank.
blank_mistaken_for = None

check_most_common_confusion(blank_mistaken_for, eval_labels, probs, "blank")

# %% solution ex-05-confusion
from conserviz_utils.teaching.widgets import filter_predictions

blank_images = filter_predictions(eval_labels, probs, data.train_features, true_species="blank")
mistaken = blank_images.loc[blank_images["predicted"] != "blank", "predicted"]
blank_mistaken_for = mistaken.value_counts().idxmax() if len(mistaken) else "none"

result = check_most_common_confusion(blank_mistaken_for, eval_labels, probs, "blank")
assert result.passed, result
result

# %% placeholder ex-05-swallows
# YOUR CODE HERE: of the images predicted blank, the true species (other than blank) most common.
swallowed_most = None

check_blank_swallows(swallowed_most, eval_labels, probs)

# %% solution ex-05-swallows
called_blank = truth[predicted == "blank"]  # the true species of the images predicted blank
animals = called_blank[called_blank != "blank"].value_counts()
print(animals.to_string())
swallowed_most = animals.idxmax() if len(animals) else "none"

result = check_blank_swallows(swallowed_most, eval_labels, probs)
assert result.passed, result
result
