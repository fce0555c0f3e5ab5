"""Box operations the specialists share: greedy non-maximum suppression and the IoU of two
boxes (``relabel.merge.box_iou``, the engine's one IoU, for a pair)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from relabel.merge import box_iou


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (0 when neither has area)."""
    return float(
        np.nan_to_num(box_iou(np.asarray([a], dtype=np.float64), np.asarray([b], dtype=np.float64))[0])
    )


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou: float,
    min_score: float = -math.inf,
    max_detections: int | None = None,
    classes: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression (OpenCV's ``dnn.NMSBoxes``, per class with ``classes``)
    of the ``[x0, y0, x1, y1]`` boxes scored over ``min_score`` (default: all): the indices
    kept, best first (ties in input order), at most ``max_detections`` (default: all). A box is
    dropped when its IoU with a kept one is over ``iou``. Corners may come in any order."""
    import cv2

    # compared as TensorFlow does: float32 scores against the threshold as a double
    candidates = np.flatnonzero(scores.astype(np.float32).astype(np.float64) > float(min_score))
    if not len(candidates):
        return candidates
    picked, ranked = boxes[candidates], scores[candidates].astype(np.float32)
    x0 = np.minimum(picked[:, 0], picked[:, 2])
    y0 = np.minimum(picked[:, 1], picked[:, 3])
    rects = np.stack(
        [x0, y0, np.maximum(picked[:, 0], picked[:, 2]) - x0, np.maximum(picked[:, 1], picked[:, 3]) - y0],
        axis=1,
    )
    arguments = (rects.astype(np.float64).tolist(), ranked.tolist(), 0.0, float(iou))
    if classes is None:
        kept = cv2.dnn.NMSBoxes(*arguments)
    else:
        kept = cv2.dnn.NMSBoxesBatched(
            rects.astype(np.float64).tolist(),
            ranked.tolist(),
            classes[candidates].astype(np.int32).tolist(),
            0.0,
            float(iou),
        )
    # best first, ties in input order (as the library sorts); OpenCV's top_k would cut the
    # candidates before suppressing where TensorFlow's max output cuts after: cut here
    kept = np.sort(np.asarray(kept, dtype=int).reshape(-1))
    return candidates[kept[np.argsort(-ranked[kept], kind="stable")][:max_detections]]
