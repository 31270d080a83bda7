"""Fine-grained classifiers: a feature-map backbone + a pooling head (gap, bilinear, cbp, rm, isqrt) + a linear layer.

`python -m models.finegrained.train --head gap,bilinear,isqrt` trains and evaluates each head (see train.py).
"""
from models.finegrained.model import HEADS, FineGrainedClassifier, SmallResNet, make_head  # noqa: F401
