"""Data: exact Gaussian mixtures (ground truth) and datasets."""
from fkdiff.data import gmm, toy
from fkdiff.data.gmm import GaussianMixture, make_mixture
