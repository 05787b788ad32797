# Exercise cells of notebooks/04_train.ipynb: the learner's placeholder and the worked solution
# of each. `make solutions` writes the placeholders into the notebook and the solutions into
# notebooks/solutions/04_train.ipynb. Edit the exercises here, never in those notebooks.

# %% placeholder ex-04-lr
# YOUR CODE HERE: train fresh heads at recipe.head_lr * 10 and / 10, add their histories to
# lr_histories, and set best_lr to the rate whose head reached the lowest held-out log loss.
lr_histories = {recipe.head_lr: head_history}
best_lr = None

check_best_learning_rate(best_lr, lr_histories)

# %% solution ex-04-lr
lr_histories = {recipe.head_lr: head_history}
for lr in (recipe.head_lr * 10, recipe.head_lr / 10):
    head = fresh_head(model.head, seed=recipe.seed)
    lr_histories[lr] = train_head(head, embeddings, data, train_ids, recipe.replace(head_lr=lr), progress=False)
    plot_loss_curve(lr_histories[lr], held_out="held-out training sites").suptitle(f"head lr {lr:g}")
best_lr = min(lr_histories, key=lambda lr: best_epoch(lr_histories[lr])["eval_log_loss"])

result = check_best_learning_rate(best_lr, lr_histories)
assert result.passed, result
result

# %% placeholder ex-04-kept
# YOUR CODE HERE: the epoch whose head early stopping kept in the lr × 10 run.
kept_fast = None

check_best_epoch(kept_fast, lr_histories, lr=recipe.head_lr * 10)

# %% solution ex-04-kept
fast = lr_histories[recipe.head_lr * 10]
held_out = fast[fast["phase"] == "eval"]
kept_fast = int(held_out.loc[held_out["eval_log_loss"].idxmin(), "epoch"])

result = check_best_epoch(kept_fast, lr_histories, lr=recipe.head_lr * 10)
assert result.passed, result
result
