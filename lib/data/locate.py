"""Which data directory a script works on: the one given, or the embedded demo data (generated on first use)."""
import logging
from pathlib import Path

from lib.core.paths import DEMO_DATA_DIR
from lib.data.demo.build import generate_demo

log = logging.getLogger(__name__)


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The given data directory, or the embedded demo data (generated on first use)."""
    if data_dir is not None:
        return Path(data_dir).resolve()
    log.info("no --data-dir: using the embedded demo data in %s", DEMO_DATA_DIR)
    return generate_demo(DEMO_DATA_DIR)
