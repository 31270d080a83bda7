"""Self-supervised instance discrimination on vkernels' InfoNCE-with-bank loss and memory bank.

moco.py (MoCo v2: query/momentum encoders, a queue, an MLP head, shuffled BN), npid.py (NPID: a momentum memory bank
indexed by instance), xmodal.py (cross-modal instance discrimination as in AVID: two encoders, two banks, each
modality's query against the other modality's memory). train.py is the entry point:
`python -m models.ssl.train --method moco|npid|xmodal`.
"""
