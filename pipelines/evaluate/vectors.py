"""Vector columns between Arrow (as LanceDB stores and searches them) and numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def to_fixed_size_list(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """``[N, D]`` float32 -> fixed_size_list<float32>[D] (searchable by LanceDB)."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def to_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """fixed_size_list<float32>[D] ``[N]`` -> ``[N, D]`` float32 (a writable copy)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.array(flat, np.float32).reshape(len(column), column.type.list_size)
