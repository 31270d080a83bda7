"""Fine-grained classifiers: a feature-map backbone + a pooling head (gap, bilinear, cbp, rm, isqrt) + a linear layer,
and the models of archs.py on the same ops (hbp, dbt, cin, apinet, racnn).

`python -m models.finegrained.train --head gap,bilinear,isqrt` trains and evaluates each head;
`--arch hbp,dbt,cin,apinet,racnn` the other models (see train.py).
"""
from models.finegrained.model import HEADS, FineGrainedClassifier, SmallResNet, make_head  # noqa: F401
