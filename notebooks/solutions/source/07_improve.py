# Exercise cells of notebooks/07_improve.ipynb: the learner's placeholder and the worked solution
# of each. `make solutions` writes the placeholders into the notebook and the solutions into
# notebooks/solutions/07_improve.ipynb. Edit the exercises here, never in those notebooks.

# %% placeholder ex-07-geometric
# YOUR CODE HERE: the geometric blend of the first train image's members, whole.oof[0]
# (members × species): mean of the log-probabilities, exp, then divide by the row's sum.
member_probs = whole.oof[0]
geometric_row = None

check_geometric_blend(geometric_row, member_probs)

# %% solution ex-07-geometric
import numpy as np

member_probs = whole.oof[0]
mean_logs = np.log(np.clip(member_probs, 1e-15, 1.0)).mean(axis=0)  # clipped like the metric
geometric_row = np.exp(mean_logs) / np.exp(mean_logs).sum()

result = check_geometric_blend(geometric_row, member_probs)
assert result.passed, result
result

# %% placeholder ex-07-weights
# YOUR CODE HERE: the weights of fold 0's heads from their validation log losses: (1 / loss) ** 2,
# 0 for a head above MAX_RATIO × the best one's loss, then scaled to add up to 1.
fold_losses = whole.val_loss[0]
weights = None

check_member_weights(weights, fold_losses, power=2, max_ratio=MAX_RATIO)

# %% solution ex-07-weights
fold_losses = whole.val_loss[0]
raw = (1 / fold_losses) ** 2
raw[fold_losses > MAX_RATIO * fold_losses.min()] = 0.0  # too weak: dropped
weights = raw / raw.sum()

result = check_member_weights(weights, fold_losses, power=2, max_ratio=MAX_RATIO)
assert result.passed, result
result
