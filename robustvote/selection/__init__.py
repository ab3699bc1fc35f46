"""Member selection for voting ensembles: robustness matrix, diversity and subset search.

Every pool member is attacked on its own on a selection slice (:mod:`.matrix`), pairwise
diversity is measured from the resulting matrix (:mod:`.diversity`), subsets of odd sizes are
ranked by their majority-robust estimate (:mod:`.search`) and the best ones are written as
pool files (:mod:`.report`).
"""

from robustvote.selection.diversity import Diversity, measure_diversity, write_diversity_csv, write_heatmap
from robustvote.selection.matrix import (
    MatrixBuild,
    MatrixSetup,
    MemberRow,
    RobustnessMatrix,
    build_matrix,
    data_digest,
    load_cache,
    make_member_attacker,
    member_key,
    save_cache,
)
from robustvote.selection.report import format_table, write_pool_file, write_selection
from robustvote.selection.search import (
    ScoredSubset,
    SearchMethod,
    SizeSearch,
    beam_search,
    check_size,
    exhaustive_search,
    majority_robust_estimate,
    pack_rows,
    score_subsets,
    search_size,
)

__all__ = [
    "Diversity",
    "MatrixBuild",
    "MatrixSetup",
    "MemberRow",
    "RobustnessMatrix",
    "ScoredSubset",
    "SearchMethod",
    "SizeSearch",
    "beam_search",
    "build_matrix",
    "check_size",
    "data_digest",
    "exhaustive_search",
    "format_table",
    "load_cache",
    "majority_robust_estimate",
    "make_member_attacker",
    "measure_diversity",
    "member_key",
    "pack_rows",
    "save_cache",
    "score_subsets",
    "search_size",
    "write_diversity_csv",
    "write_heatmap",
    "write_pool_file",
    "write_selection",
]
