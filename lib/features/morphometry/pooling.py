"""Per-patient pooling of the cell measurements (lib.features.morphometry.segment): mean, spread and quantiles
of the good cells, and the counts of unmeasurable ones. Runs on every read of the cache, so it is not part of
the measurement cache key."""
import numpy as np
import pandas as pd

from lib.core.errors import DataError
from lib.features.morphometry.segment import MEASUREMENTS

QUANTILES = {"q10": 0.1, "median": 0.5, "q90": 0.9}
AGGREGATES = ["mean", "std", "iqr", *QUANTILES]
ALL_POOLED = [f"{m}_{a}" for m in MEASUREMENTS for a in AGGREGATES] + ["frac_bad_cells"]
# Fixed before looking at any label-based score: what a haematologist reads on a smear - size (mean,
# large-cell tail, spread), N/C ratio, nuclear roundness, chromatin texture and cytoplasm basophilia
# (blue: negative b*). frac_bad_cells is not in it: 3 of the 9305 real training cells are flagged.
DEFAULT_POOLED = ["nucleus_area_mean", "nucleus_area_q90", "nucleus_area_iqr", "cell_area_mean",
                  "nc_ratio_mean", "circularity_mean", "chromatin_laplacian_mean", "cyto_b_mean"]
COUNTS = ["n_cells", "n_good", "n_bad_cells", "frac_bad_cells"]


def pool_patient_features(cells: pd.DataFrame, features: list[str] | None = DEFAULT_POOLED) -> pd.DataFrame:
    """Per-patient pooled good-cell measurements (index ID); ``features=None`` gives ALL_POOLED + counts."""
    missing = [c for c in ["ID", "ok", *MEASUREMENTS] if c not in cells.columns]
    if missing:
        raise DataError(f"cell measurements: missing column(s) {', '.join(missing)}")
    unknown = [f for f in features or [] if f not in ALL_POOLED + COUNTS]
    if unknown:
        raise DataError(f"pooled morphometry: unknown feature(s) {', '.join(unknown)}")
    good = cells.loc[cells["ok"] == 1, ["ID", *MEASUREMENTS]].astype({m: float for m in MEASUREMENTS})
    if good.empty:  # no measurable cell at all: every pooled value is NaN (imputed in-fold), not a crash
        good = pd.DataFrame({"ID": cells["ID"].iloc[:1], **{m: [np.nan] * min(1, len(cells)) for m in MEASUREMENTS}})
    grouped = good.groupby("ID")[MEASUREMENTS]
    quant = grouped.quantile([0.1, 0.25, 0.5, 0.75, 0.9])
    parts = {"mean": grouped.mean(), "std": grouped.std(),
             "iqr": quant.xs(0.75, level=1) - quant.xs(0.25, level=1),
             **{name: quant.xs(q, level=1) for name, q in QUANTILES.items()}}
    pooled = pd.concat({a: parts[a] for a in AGGREGATES}, axis=1)
    pooled.columns = [f"{m}_{a}" for a, m in pooled.columns]
    counts = cells.groupby("ID")["ok"].agg(n_cells="size", n_good=lambda ok: int((ok == 1).sum()))
    counts["n_bad_cells"] = counts["n_cells"] - counts["n_good"]
    counts["frac_bad_cells"] = counts["n_bad_cells"] / counts["n_cells"]
    pooled = counts.join(pooled)[COUNTS + ALL_POOLED[:-1]]
    return pooled if features is None else pooled[list(features)]
