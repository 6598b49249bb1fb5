"""Ship a pretrained cell encoder in the repository: weights/<name>.safetensors and its card weights/<name>.json.

Example (the recipe of the shipped lymph-ssl, docs/lymph-ssl.md):
  python ship_encoder.py --run runs/lymph_ssl_b96 --data-dir ../shared/data/lymphocytosis --name lymph-ssl \\
      --command "python pretrain_cnn.py -c configs/pretrain_cpu.yaml ..." [--command ...]
Then every script takes --weights lymph-ssl (train_cnn.py) or --encoder lymph-ssl (train_clinical.py).
"""
import argparse
from pathlib import Path

from lib.core.cli import run_main
from lib.core.config import ArgParser
from lib.core.errors import raise_first
from lib.core.paths import CACHE_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = ArgParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--run", type=Path, required=True, help="a finished pretrain_cnn.py run directory")
    parser.add_argument("--name", default="lymph-ssl", help="the name the scripts load it by (weights/<name>.*)")
    parser.add_argument("--data-dir", type=Path, required=True, help="cells for the fp16-against-fp32 check")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="decoded images")
    parser.add_argument("--command", action="append", default=[], help="a command of the recipe, for the card")
    return parser


def main(argv: list[str] | None = None) -> Path:
    """Check the options, then write the weights and the card; return the card's path."""
    args = build_parser().parse_args(argv)
    raise_first([(not (args.run / "encoder.pth").is_file(), f"{args.run}: no encoder.pth (not a finished run)"),
                 (not args.name.replace("-", "").isalnum(), f"--name {args.name!r}: letters, digits and '-' only")])
    from lib.data.dataset import load_dataset
    from lib.stages.ship import ship_encoder  # torch: after the checks
    card = ship_encoder(args.run, args.name, load_dataset(args.data_dir), args.cache_dir, args.command)
    print(f"shipped {args.run} as '{args.name}': {card} (and the .safetensors beside it)")
    return card


if __name__ == "__main__":
    run_main(main)
