"""Competition data layer: a competition directory -> validated patient bags.

Two real layouts are accepted:
- 2024: ``trainset/trainset_true.csv`` + ``testset/testset_data.csv``;
- 2021: one ``clinical_annotation.csv`` at the root (unnamed index column first, test rows LABEL=-1).
Images always live in ``trainset/P<id>/*.jpg`` and ``testset/P<id>/*.jpg``.
Unreadable images (zero bytes, no JPEG start marker or frame header, no end-of-image marker after the image
data, a declared size beyond lib.data.jpeg.MAX_PIXELS) are skipped with a warning naming them, before anything
decodes them; a patient whose bag ends up empty is an error.
"""
import hashlib
import logging
import math
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lib.core.errors import DataError
from lib.core.io import os_problem
from lib.data.clinical import AGE_REFERENCE_DATE, MAX_AGE, age_years, clinical_features, normalise_gender, parse_dob
from lib.data.digests import file_digest
from lib.data.jpeg import has_end_marker, read_header, size_problem

log = logging.getLogger(__name__)
COLUMNS = ["ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"]
IMAGE_SUFFIXES = {".jpg", ".jpeg"}
SPLIT_DIRS = {"train": "trainset", "test": "testset"}
# Patient IDs name folders: a sane name only (no separators, no '.'/'..', at most 64 characters).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Plausible lymphocyte counts (G/L): the highest counts reported in CLL are a few hundred G/L, so a value
# above 1000 is a unit or typing error (e.g. cells/uL instead of G/L), not a patient.
MAX_LYMPH_COUNT = 1000.0


@dataclass
class Dataset:
    """Validated patients (index ID) and the image paths of each patient's bag."""

    root: Path
    layout: str
    patients: pd.DataFrame
    images: dict[str, list[Path]] = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """Short hash of the patient IDs, splits and labels: identifies this dataset."""
        rows = sorted(f"{i}:{r.split}:{r.LABEL}" for i, r in self.patients.iterrows())
        return hashlib.sha1("\n".join(rows).encode()).hexdigest()[:8]

    def test_inputs(self) -> dict[str, str]:
        """Per test patient, a short hash of everything a model reads of it: the clinical values and the name and
        bytes of every image. Recorded by each run (config.yaml ``test_inputs``); a submission or report made
        from the runs for a data directory whose test inputs differ is refused (the runs scored other inputs)."""
        out = {}
        for pid in sorted(self.test.index):
            row = self.patients.loc[pid]
            h = hashlib.sha1(f"{row.GENDER}|{row.DOB}|{row.LYMPH_COUNT!r}".encode())
            for path in sorted(self.images[pid], key=lambda q: q.name):
                h.update(f"\n{path.name}:".encode("utf-8", "surrogateescape"))  # a name that is not UTF-8: its bytes
                h.update(bytes.fromhex(file_digest(path)))  # the SHA-1 every cache keys the cell on
            out[str(pid)] = h.hexdigest()[:12]
        return out

    @property
    def name(self) -> str:
        """Human-readable unique name, e.g. ``lymphocytosis-1a2b3c4d``."""
        return f"{self.root.name}-{self.fingerprint}"

    def split(self, which: str) -> pd.DataFrame:
        """Patients of one split ('train' or 'test')."""
        return self.patients[self.patients["split"] == which]

    @property
    def train(self) -> pd.DataFrame:
        return self.split("train")

    @property
    def test(self) -> pd.DataFrame:
        return self.split("test")


def load_dataset(root: str | Path, scoring_only: bool = False) -> Dataset:
    """Load and validate a competition directory in either layout.

    ``scoring_only`` (predict.py: patients to score with trained models) accepts a 2024-layout directory
    without training patients: no ``trainset/trainset_true.csv``, or one with a header only.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found")
    layout, table = _read_tables(root, scoring_only)
    patients = _validate_patients(table)
    if not scoring_only:
        _check_both_classes(patients, root, layout)
    images = {pid: _patient_images(root, pid, split) for pid, split in patients["split"].items()}
    patients["n_images"] = pd.Series({pid: len(paths) for pid, paths in images.items()})
    patients = patients.join(clinical_features(patients))
    return Dataset(root=root, layout=layout, patients=patients, images=images)


def _check_both_classes(patients: pd.DataFrame, root: Path, layout: str) -> None:
    """A training set needs patients of both classes: with one, no model can learn and BA/AUC are undefined."""
    labels = patients.loc[patients["split"] == "train", "LABEL"]
    if labels.nunique() < 2:
        where = root / ("trainset/trainset_true.csv" if layout == "2024" else "clinical_annotation.csv")
        have = f"all {len(labels)} training patients have LABEL {labels.iloc[0]}" if len(labels) else "no training patients"
        raise DataError(f"{where}: {have}; training needs both classes (0 reactive, 1 tumoral)")


def _read_tables(root: Path, scoring_only: bool = False) -> tuple[str, pd.DataFrame]:
    """Read the clinical CSV(s) of either layout into one table with a ``split`` column."""
    train_csv = root / "trainset" / "trainset_true.csv"
    test_csv = root / "testset" / "testset_data.csv"
    annotation_csv = root / "clinical_annotation.csv"
    if train_csv.exists() or test_csv.exists():
        parts = []
        if train_csv.exists() or not scoring_only:
            parts.append(_read_csv(train_csv, allow_empty=scoring_only).assign(split="train"))
        parts.append(_read_csv(test_csv).assign(split="test"))
        return "2024", pd.concat(parts, ignore_index=True)
    if annotation_csv.exists():
        table = _read_csv(annotation_csv)
        split = ["test" if str(v).strip() == "-1" else "train" for v in table["LABEL"]]
        return "2021", table.assign(split=split)
    raise DataError(f"{root}: no trainset/trainset_true.csv + testset/testset_data.csv "
                    f"(2024 layout) nor clinical_annotation.csv (2021 layout)")


def _read_csv(path: Path, allow_empty: bool = False) -> pd.DataFrame:
    """Read one clinical CSV as text, dropping an unnamed index column, checking the columns."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    _check_utf8(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot parse CSV ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    names = [str(c) for c in table.columns]
    repeated = sorted({re.sub(r"\.\d+$", "", c) for c in names if re.fullmatch(r".+\.\d+", c)
                       and re.sub(r"\.\d+$", "", c) in names})
    if repeated:
        raise DataError(f"{path}: duplicate column(s) {', '.join(repeated)}")
    table = table.loc[:, [c for c in table.columns if c and not c.startswith("Unnamed")]]
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        hint = " (use ',' as delimiter)" if len(table.columns) == 1 and ";" in str(table.columns[0]) else ""
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}{hint}")
    if table.empty and not allow_empty:
        raise DataError(f"{path}: no patient rows (header only)")
    table = table[COLUMNS].apply(lambda col: col.str.strip())
    return table.assign(source=str(path))


def _check_utf8(path: Path) -> None:
    """The CSV must be UTF-8 text: name the byte offset and line of the first bad byte."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}, "
                        f"line {line}); save it as UTF-8") from None


def _validate_patients(table: pd.DataFrame) -> pd.DataFrame:
    """Check every row and return typed patients indexed by ID."""
    repeated = table[table["ID"].duplicated()]
    if len(repeated):
        ids = ", ".join(repeated["ID"].unique()[:5])
        raise DataError(f"{repeated['source'].iloc[0]}: duplicate patient ID(s) {ids}")
    rows = [_validate_row(row) for row in table.to_dict("records")]
    return pd.DataFrame(rows).set_index("ID")


def _validate_row(row: dict) -> dict:
    """Type and check one clinical row; errors name the file and the patient."""
    where = f"{row['source']}: patient {row['ID'] or '<empty ID>'}"
    if not row["ID"]:
        raise DataError(f"{where}: empty ID")
    if not ID_PATTERN.fullmatch(row["ID"]) or row["ID"] in {".", ".."}:
        raise DataError(f"{where}: ID {row['ID']!r} is not a plain folder name "
                        f"(letters, digits, '_', '.', '-'; at most 64 characters)")
    label = _parse_label(row["LABEL"], row["split"], where)
    try:
        dob = parse_dob(row["DOB"])
    except ValueError:
        raise DataError(f"{where}: unparseable DOB {row['DOB']!r} (expected M/D/YYYY or DD-MM-YYYY)") from None
    age = age_years(dob)
    if not 0 <= age <= MAX_AGE:
        raise DataError(f"{where}: DOB {row['DOB']!r} gives age {age:.1f} at {AGE_REFERENCE_DATE}, "
                        f"outside 0..{MAX_AGE}")
    try:
        gender = normalise_gender(row["GENDER"])
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None
    count = pd.to_numeric(row["LYMPH_COUNT"], errors="coerce")
    if not count > 0:
        raise DataError(f"{where}: LYMPH_COUNT {row['LYMPH_COUNT']!r} is missing or not positive")
    if not math.isfinite(count) or count > MAX_LYMPH_COUNT:
        raise DataError(f"{where}: LYMPH_COUNT {row['LYMPH_COUNT']!r} is implausible "
                        f"(expected a finite count in G/L, at most {MAX_LYMPH_COUNT:g})")
    return {"ID": row["ID"], "LABEL": label, "GENDER": gender, "DOB": row["DOB"],
            "LYMPH_COUNT": float(count), "split": row["split"]}


def _parse_label(text: str, split: str, where: str) -> int:
    """Label in {0, 1} for train rows, -1 for test rows."""
    if text not in {"0", "1", "-1"}:
        raise DataError(f"{where}: LABEL {text!r} is not one of 0, 1, -1")
    label = int(text)
    if split == "test" and label != -1:
        raise DataError(f"{where}: test patient has a label ({label}); test rows must have LABEL -1")
    if split == "train" and label == -1:
        raise DataError(f"{where}: train patient has no label (LABEL -1)")
    return label


def _patient_images(root: Path, pid: str, split: str) -> list[Path]:
    """Readable images of one patient's bag; unreadable files are skipped with a warning."""
    split_dir = root / SPLIT_DIRS[split]
    folder = split_dir / pid
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder of {split} patient {pid} not found")
    if folder.resolve().parent != split_dir.resolve():
        raise DataError(f"{folder}: image folder of {split} patient {pid} resolves to {folder.resolve()}, "
                        f"outside {split_dir} (a link out of the data directory?)")
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the images of patient {pid} ({os_problem(exc)})") from None
    if not files:
        raise DataError(f"{folder}: no .jpg images for patient {pid}")
    good = [p for p in files if _warn_if_bad(p)]
    if not good:
        raise DataError(f"{folder}: every image of patient {pid} is unreadable")
    return good


def _warn_if_bad(path: Path) -> bool:
    """True for a plausible JPEG; log a warning naming the file otherwise."""
    problem = jpeg_problem(path)
    if problem:
        log.warning("%s: %s, skipped", path, problem)
    return problem is None


def jpeg_problem(path: Path) -> str | None:
    """Cheap structural check of a JPEG, before anything decodes it: None if fine, else what is wrong (a folder,
    pipe, broken link or link loop named like an image is a problem too, never an exception or a read that blocks).

    Only the markers are read (lib.data.jpeg): the size the frame header declares must be a sane cell image's (at
    most lib.data.jpeg.MAX_PIXELS: a decompression bomb is never decoded), and an end-of-image marker must follow
    the image data, at the end of the file or with bytes padded after it (a truncated file has none)."""
    try:
        info = path.stat()
    except OSError as exc:  # a broken link, a symlink loop, no permission on the folder
        return f"unreadable ({os_problem(exc)})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a folder, pipe or device named like an image)"
    if info.st_size == 0:
        return "zero-byte file"
    try:
        with open(path, "rb") as fh:
            header = read_header(fh)
            if isinstance(header, str):
                return header
            if problem := size_problem(header):
                return problem
            if not has_end_marker(fh, header.scan, info.st_size):
                return "truncated JPEG (no end-of-image marker after the image data)"
    except OSError as exc:
        return f"unreadable ({os_problem(exc)})"
    return None


def check_test_inputs(dataset: Dataset, recorded: dict | None, where: str | Path) -> None:
    """Refuse (one line naming a patient) a data directory whose test inputs differ from those ``where`` scored."""
    fix = f"score {dataset.root} with predict.py --ensemble <ensemble run>, or re-run the stages on it"
    if not recorded:
        raise DataError(f"{where}: records no test inputs (made by an older version), so its predictions cannot "
                        f"be checked against {dataset.root}; {fix}")
    changed = changed_inputs(dataset.test_inputs(), recorded)
    if changed:
        raise DataError(f"{dataset.root}: test patient {changed[0]}'s inputs (clinical values or images) differ from "
                        f"those {where} scored ({len(changed)} patient(s) differ); {fix}")


def changed_inputs(a: dict, b: dict) -> list[str]:
    """Patients whose test-input fingerprints differ between two records (missing from one counts), sorted."""
    return sorted(pid for pid in set(a) | set(b) if a.get(pid) != b.get(pid))
