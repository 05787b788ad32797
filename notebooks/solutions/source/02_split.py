# Exercise cells of notebooks/02_split.ipynb: the learner's placeholder and the worked solution
# of each. `make solutions` writes the placeholders into the notebook and the solutions into
# notebooks/solutions/02_split.ipynb. Edit the exercises here, never in those notebooks.

# %% placeholder ex-02-holdout
# YOUR CODE HERE: holdout = (train_ids, eval_ids), eval being every image of the biggest site.
holdout = None

check_site_holdout(holdout, data.train_features)

# %% solution ex-02-holdout
sites = data.train_features["site"]
biggest_site = sites.value_counts().idxmax()
holdout = (sites.index[sites != biggest_site], sites.index[sites == biggest_site])

result = check_site_holdout(holdout, data.train_features)
assert result.passed, result
result

# %% placeholder ex-02-shift
# YOUR CODE HERE: the species whose share moves most, and its eval share minus its train share.
most_moved, shift = None, None

check_share_shift(most_moved, shift, holdout, data.train_labels)

# %% solution ex-02-shift
shares = split_summary({"biggest site": holdout}, data.train_features, data.train_labels)
shares = shares.drop(columns=["images", "sites", "sites_in_both"]).loc["biggest site"]
moves = shares.loc["eval"] - shares.loc["train"]
most_moved = moves.abs().idxmax()
shift = moves[most_moved]

result = check_share_shift(most_moved, shift, holdout, data.train_labels)
assert result.passed, result
result
