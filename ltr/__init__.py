"""Pure learning-to-rank: feature math, click models, training, evaluation, model files.

Imports nothing from the other packages
(dependency direction: ltr <- indexing <- search <- monitoring).
"""
