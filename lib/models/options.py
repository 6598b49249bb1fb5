"""What the option parsers need to know of the models, without importing them (no torch, no scikit-learn):
the MIL head names (lib.models.heads builds them) and the clinical estimator's C and penalty choices."""
import argparse

HEAD_NAMES = ("mean", "max", "topk", "chowder", "attention", "instance_bn", "anomaly")
INNER_CV = "cv"
PENALTIES = {"l2": (0.0, "newton-cholesky"), "l1": (1.0, "liblinear")}  # penalty -> (l1_ratio, solver)


def parse_c(text: str | float) -> str | float:
    """``cv`` (choose C by inner CV, as when the option is left out) or a positive number (fixed C)."""
    if text == INNER_CV:
        return INNER_CV
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected 'cv' or a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"C must be a finite number > 0, got {text!r}")
    return value
