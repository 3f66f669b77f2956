"""Analyses as functions of arrays: position, matching, hierarchy.

Each function takes arrays / tensors / DataFrames and returns a DataFrame or a dict of plain numbers;
no file I/O. Notebooks call one function per cell.
"""
from . import hierarchy, matching, position
from .hierarchy import (codes, coactivation, cross_level_decoder_cosine, dead_per_level, hierarchy_score,
                        infer_parents, level_correlation)
from .matching import (assign, compare_saes, cosine_matrix, decoder_embedding, factor_table, layer_pairs,
                       match_features, match_pair, shared_ratio, single_factor_pairs, within_sae_top2)
from .position import (feature_deciles, lm_vs_sae_loss, position_features, position_intervened,
                       position_intervention, position_profile, residual_norm_by_position, stack_layers)
