"""Self-supervised pretraining of a cell encoder (SimCLR or DINO) on every cell of a data directory, never reading labels.

Examples:
  python pretrain_cnn.py                                           # demo data, CPU defaults (seconds per epoch)
  python pretrain_cnn.py -c configs/pretrain_cpu.yaml --data-dir ../shared/data/lymphocytosis --experiment ssl
  python pretrain_cnn.py -c configs/pretrain_gpu.yaml --data-dir ../shared/data/lymphocytosis --experiment ssl_gpu
  python pretrain_cnn.py ... --scope train     # training patients' cells only (no transductive use of test cells)
  python pretrain_cnn.py ... --resume          # after a kill: continues from the last finished epoch
  python pretrain_cnn.py -c configs/pretrain_cpu_dino.yaml ...  # DINO, multi-crop (no negatives)
Then: python train_cnn.py -c configs/cnn_cpu_ssl.yaml --weights runs/ssl/encoder.pth ...
Writes runs/<experiment>/ (see lib/stages/pretrain.py for the layout).
"""
import argparse

from lib.core.cli import run_main
from lib.core.config import ArgParser, add_run_args, parse_config
from lib.core.paths import RUNS_DIR
from lib.core.runs import create_run
from lib.stages.context import load_run_inputs, run_config
from lib.stages.options import add_pretrain_args, check_pretrain_ranges


def build_parser() -> argparse.ArgumentParser:
    """Run options plus the pretraining's own."""
    parser = ArgParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n".join(__doc__.splitlines()[2:]))
    return add_pretrain_args(add_run_args(parser))


def main(argv: list[str] | None = None) -> dict:
    """Validate the options and data, then pretrain (or resume); return the encoder record."""
    args = parse_config(build_parser(), argv)
    check_pretrain_ranges(args)
    dataset, inputs = load_run_inputs(args)
    from lib.stages.pretrain import ENCODER, check_data, check_options, run_pretrain  # torch, timm: after the checks
    backbone, data_config, device = check_options(args)
    check_data(args, dataset)
    inputs = inputs.named(args.experiment or "pretrain")
    run_dir = create_run((args.runs_dir or RUNS_DIR) / inputs.experiment, run_config(args, inputs), resume=args.resume)
    record = run_pretrain(args, dataset, run_dir, backbone, data_config, device)
    print(f"{inputs.experiment}: {record['epochs']} epochs of {record['objective']} on {record['n_cells']} cells (scope "
          f"{record['scope']}, {record['precision']}), final loss {record['loss_per_epoch'][-1]:.3f}, "
          f"{record['img_per_s']:.0f} img/s -> {run_dir / ENCODER}")
    return record


if __name__ == "__main__":
    run_main(main)
