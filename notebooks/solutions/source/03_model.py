# Exercise cells of notebooks/03_model.ipynb: the learner's placeholder and the worked solution
# of each. `make solutions` writes the placeholders into the notebook and the solutions into
# notebooks/solutions/03_model.ipynb. Edit the exercises here, never in those notebooks.

# %% placeholder ex-03-frozen
# YOUR CODE HERE: build the ResNet50 with the seed head (pretrained=False), freeze its backbone,
# and count the parameters that still train.
frozen_trainable = None

check_frozen_trainable(frozen_trainable, arch="resnet50", head="seed")

# %% solution ex-03-frozen
resnet = freeze_backbone(build_model("resnet50", pretrained=False, head="seed"))
resnet_total, frozen_trainable = count_parameters(resnet)
print(f"{frozen_trainable:,} of {resnet_total:,} parameters train ({frozen_trainable / resnet_total:.1%})")

result = check_frozen_trainable(frozen_trainable, arch="resnet50", head="seed")
assert result.passed, result
result

# %% placeholder ex-03-softmax
# YOUR CODE HERE: probabilities from `logits` without .softmax: exp, then divide by each row's sum.
my_probs = None

check_softmax(my_probs, logits)

# %% solution ex-03-softmax
exponentials = logits.exp()
my_probs = exponentials / exponentials.sum(dim=1, keepdim=True)

result = check_softmax(my_probs, logits)
assert result.passed, result
result
