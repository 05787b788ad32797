# Exercise cells of notebooks/06_submit.ipynb: the learner's placeholder and the worked solution
# of each. `make solutions` writes the placeholders into the notebook and the solutions into
# notebooks/solutions/06_submit.ipynb. Edit the exercises here, never in those notebooks.

# %% placeholder ex-06-broken
# YOUR CODE HERE: a broken copy of `submission` (drop a row, swap two columns, a value of 2, …).
broken = None

check_broken_submission(broken, data.submission_format)

# %% solution ex-06-broken
broken = submission.copy()
broken.iloc[0, 0] = 2.0  # a probability above 1

try:
    validate_submission(broken, data.submission_format)
except SubmissionError as refusal:
    print(refusal)

result = check_broken_submission(broken, data.submission_format)
assert result.passed, result
result

# %% placeholder ex-06-blend
# YOUR CODE HERE: blended = 0.9 * submission + 0.1 / 8; then −ln of its smallest probability.
worst_case = None

check_worst_case_cost(worst_case, submission, weight=0.9)

# %% solution ex-06-blend
import math

blended = 0.9 * submission + 0.1 / submission.shape[1]
validate_submission(blended, data.submission_format)  # still a submission the competition accepts
worst_case = -math.log(blended.to_numpy().min())

result = check_worst_case_cost(worst_case, submission, weight=0.9)
assert result.passed, result
result
