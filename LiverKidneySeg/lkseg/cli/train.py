"""``lkseg train DATASET_DIR OUT_MODEL_DIR``: train a model package on an MSD / nnU-Net / LiTS / KiTS23 dataset."""

from __future__ import annotations

import argparse

from lkseg.progress import progress_lines

__all__ = ["config_from_args", "register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model package (MONAI U-Net, optional coarse-to-fine cascade) on a labelled dataset"
    )
    p.add_argument("dataset", help="dataset folder (dataset.json + imagesTr/labelsTr, or LiTS / KiTS23 layout)")
    p.add_argument("out", help="output model package folder")
    p.add_argument(
        "--preset", choices=["cascade", "single", "tiny"], default="cascade", help="stage settings (default cascade)"
    )
    p.add_argument(
        "--layout", default="auto", choices=["auto", "msd", "nnunet", "lits", "kits23"], help="dataset layout"
    )
    p.add_argument(
        "--labels", default=None, help="label mapping: lits, kits23, product, '1=liver,2=liver_tumor' or a JSON file"
    )
    p.add_argument("--epochs", type=int, help="epochs of the fine stage")
    p.add_argument("--coarse-epochs", type=int, help="epochs of the coarse stage")
    p.add_argument("--iters-per-epoch", type=int, help="training steps per epoch (all stages)")
    p.add_argument("--batch-size", type=int, help="patches per step (fine stage)")
    p.add_argument("--lr", type=float, help="peak learning rate (fine stage)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SI", "SJ", "SK"), help="fine stage spacing in mm")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("PI", "PJ", "PK"), help="fine stage patch in voxels")
    p.add_argument("--channels", type=int, nargs="+", help="fine U-Net channels per level, e.g. 16 32 64 128 256")
    p.add_argument("--res-units", type=int, help="residual units per level (fine stage)")
    p.add_argument("--max-minutes", type=float, help="wall-time budget of the fine stage (the schedule adapts)")
    p.add_argument("--coarse-max-minutes", type=float, help="wall-time budget of the coarse stage")
    p.add_argument(
        "--weights-dtype", choices=["float32", "float16"], help="storage dtype of the weights (float16 halves the size)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--max-cases", type=int, help="use at most this many cases")
    p.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), default=(-200.0, 350.0), help="HU window")
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT/.train")
    p.add_argument("--init", default=None, help="start from this model package's weights (fine-tuning)")
    p.add_argument("--id", default=None, help="model id (default: the output folder name)")
    p.add_argument("--version", dest="model_version", default="0.1.0")
    p.add_argument("--task", default="Automatic segmentation of abdominal CT")
    p.add_argument(
        "--license", default="Apache-2.0", help="licence of the trained weights (mind the dataset's licence)"
    )
    p.add_argument("--description", default="")
    p.add_argument("--progress-lines", action="store_true", help="print LKSEG_PROGRESS <fraction> <message> lines")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`~lkseg.train.TrainConfig` described by the command line."""
    from pathlib import Path

    from lkseg.train import PRESETS, TrainConfig

    stages = PRESETS[args.preset]()
    for stage in stages:
        if args.iters_per_epoch:
            stage.iters_per_epoch = args.iters_per_epoch
        if args.weights_dtype:
            stage.weights_dtype = args.weights_dtype
        if stage.name == "coarse":
            if args.coarse_epochs:
                stage.epochs = args.coarse_epochs
            if args.coarse_max_minutes:
                stage.max_minutes = args.coarse_max_minutes
            continue
        if args.max_minutes:
            stage.max_minutes = args.max_minutes
        if args.epochs:
            stage.epochs = args.epochs
        if args.batch_size:
            stage.batch_size = args.batch_size
        if args.lr:
            stage.lr = args.lr
        if args.spacing:
            stage.spacing = tuple(args.spacing)
        if args.patch_size:
            stage.patch_size = tuple(args.patch_size)
        if args.channels:
            stage.channels = tuple(args.channels)
        if args.res_units is not None:
            stage.num_res_units = args.res_units
    return TrainConfig(
        stages=stages,
        model_id=args.id or Path(args.out).name,
        version=args.model_version,
        task=args.task,
        description=args.description,
        license=args.license,
        labels=args.labels,
        layout=args.layout,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        amp=not args.no_amp,
        clip=tuple(args.clip),
        resume=args.resume,
        max_cases=args.max_cases,
        init_from=args.init,
        progress_bar=False if args.progress_lines else None,
    )


def run(args: argparse.Namespace) -> int:
    from lkseg.train import train_model

    progress = progress_lines(args.progress_lines, min_step=0.005)
    manifest = train_model(args.dataset, args.out, config_from_args(args), progress=progress)
    print(f"wrote model package {manifest.folder} ({manifest.id}@{manifest.version})")
    for stage, info in manifest.accuracy.get("validation", {}).items():
        dice = ", ".join(f"{k} {v:.3f}" for k, v in info.get("dice", {}).items())
        print(f"  {stage}: best epoch {info.get('best_epoch')}, validation Dice {dice}")
    return 0
