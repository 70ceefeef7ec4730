"""Batch retrieval evaluation: every caption of a split against an index table, exactly and
through the ANN index, so users see both how good the model is and what the index costs.

::

    read_manifest, one query per caption of the split          (driver)
    open the table, check_model; read the split's vectors       [V, D]   (model_id rows only)
    videos of the split missing from the table -> reported with the reason (errors table, ...)
    encode the captions with the text tower                     [Q, D]   (in-process, or a Ray
                                                                          Data actor pool when
                                                                          the split is large)
    exact:  sim = text @ video.T a chunk at a time, never [Q, V]: captions against every
            video [C, V] -> t2v ranks and top 10; videos against every caption [Q, Vc] -> v2t
            (MSR-VTT protocol, centerclip.metrics); Ray tasks above ray_min_scores
    ANN:    t2v: LanceDB top-k per caption on the table itself (its IVF_PQ index, if any)
            v2t: LanceDB top-k per video on a temporary table of the caption embeddings, indexed
                 the same way when the table is (the table indexes videos only)
    write metrics.json, ranks.parquet, recall_at_k.png, report.html

An ANN search returns only ``k`` results, so a rank beyond ``k`` is unknown: ANN R@K is exact
for ``K <= k``; the median rank is known only when the middle ranks are within ``k``, and the mean
rank only when every rank is. Otherwise each is reported as ``None`` beside its lower bound (every
unknown rank counted as ``k + 1``).

The package, one concern a module: :mod:`~pipelines.evaluate.config` (the settings),
:mod:`~pipelines.evaluate.gallery` (queries and the videos they rank),
:mod:`~pipelines.evaluate.text_encode` (the caption encoding pool), :mod:`~pipelines.evaluate.ranks`
(exact and top-``k`` ranks), :mod:`~pipelines.evaluate.ann` (the LanceDB searches and their index),
:mod:`~pipelines.evaluate.results` and :mod:`~pipelines.evaluate.plots` (what is written),
:mod:`~pipelines.evaluate.run` (the run, top to bottom).
"""

from pipelines.evaluate.ann import gallery_filter
from pipelines.evaluate.config import DEFAULT_EXACT_CHUNK_ROWS, EvaluateConfig
from pipelines.evaluate.gallery import missing_reasons, split_queries
from pipelines.evaluate.plots import k_ticks, plot_recall_at_k, recall_at_k_figure
from pipelines.evaluate.ranks import AnnRanks, ann_ranks, exact_ranks
from pipelines.evaluate.results import EvaluationReport
from pipelines.evaluate.run import run_evaluation
from pipelines.evaluate.text_encode import encode_captions

__all__ = [
    "DEFAULT_EXACT_CHUNK_ROWS",
    "AnnRanks",
    "EvaluateConfig",
    "EvaluationReport",
    "ann_ranks",
    "encode_captions",
    "exact_ranks",
    "gallery_filter",
    "k_ticks",
    "missing_reasons",
    "plot_recall_at_k",
    "recall_at_k_figure",
    "run_evaluation",
    "split_queries",
]
