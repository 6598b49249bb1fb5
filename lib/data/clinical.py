"""Clinical attributes: parsing the raw CSV quirks and the model features derived from them."""
from datetime import date, datetime

import numpy as np
import pandas as pd

# Ages are computed at one fixed date so that features never depend on when the code runs.
# 2020-01-01 predates both competition editions (2021, 2024) and is documented in the README.
AGE_REFERENCE_DATE = date(2020, 1, 1)
MAX_AGE = 120  # years at AGE_REFERENCE_DATE; a DOB giving an age outside 0..MAX_AGE is refused
DOB_FORMATS = ("%m/%d/%Y", "%d-%m-%Y")
CLINICAL_FEATURES = ["age", "log_lymph", "gender_m"]


def parse_dob(text: str) -> date:
    """Parse a DOB written as M/D/YYYY or DD-MM-YYYY; raise ValueError otherwise."""
    text = str(text).strip()
    fmt = DOB_FORMATS[0] if "/" in text else DOB_FORMATS[1]
    return datetime.strptime(text, fmt).date()


def age_years(dob: date, at: date = AGE_REFERENCE_DATE) -> float:
    """Age in (fractional) years at the reference date."""
    return (at - dob).days / 365.25


def normalise_gender(text: str) -> str:
    """Upper-case gender code ('M' or 'F'); raise ValueError otherwise."""
    code = str(text).strip().upper()
    if code not in {"M", "F"}:
        raise ValueError(f"gender {text!r} is not M or F")
    return code


def clinical_features(patients: pd.DataFrame) -> pd.DataFrame:
    """Model features (age, log lymphocyte count, male indicator) from validated patients."""
    return pd.DataFrame({
        "age": patients["DOB"].map(lambda d: age_years(parse_dob(d))),
        "log_lymph": np.log(patients["LYMPH_COUNT"].astype(float)),
        "gender_m": (patients["GENDER"] == "M").astype(float),
    }, index=patients.index)
