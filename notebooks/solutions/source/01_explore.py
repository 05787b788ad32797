# Exercise cells of notebooks/01_explore.ipynb: the learner's placeholder and the worked solution
# of each. `make solutions` writes the placeholders into the notebook and the solutions into
# notebooks/solutions/01_explore.ipynb. Edit the exercises here, never in those notebooks.

# %% placeholder ex-01-busiest-site
# YOUR CODE HERE: the name of the site with the most training images.
busiest_site = None

check_busiest_site(busiest_site, data.train_features, data.test_features)

# %% solution ex-01-busiest-site
busiest_site = data.train_features["site"].value_counts().idxmax()

result = check_busiest_site(busiest_site, data.train_features, data.test_features)
assert result.passed, result
result

# %% placeholder ex-01-site-mix
# YOUR CODE HERE: a Series species → share of the busiest site's images (adding up to 1).
site_mix = None

check_site_species_shares(site_mix, data.train_features, data.train_labels)

# %% solution ex-01-site-mix
at_busiest_site = data.train_features["site"] == busiest_site
site_mix = data.train_species[at_busiest_site].value_counts(normalize=True)

result = check_site_species_shares(site_mix, data.train_features, data.train_labels)
assert result.passed, result
result
