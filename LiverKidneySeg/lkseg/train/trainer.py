"""Training of a model package with MONAI: patches, augmentation, Dice+CE, validation, resume.

:func:`train_model` trains each stage of a package in turn (the low-resolution ``coarse`` locator
first when the package is a cascade, then the ``fine`` segmenter) and writes a complete package
(weights, SHA-256, manifest with the validation Dice of each label).

Per stage: cases are preprocessed onto the stage grid (:mod:`lkseg.train.preprocess`), split into
training and validation cases (seeded), and patches are drawn with MONAI's
``RandCropByLabelClassesd`` (every class equally likely at a patch centre, so small tumours are
seen often), augmented with ``RandAffined`` (rotation, scaling), Gaussian noise, intensity scale
and shift, contrast (gamma) and smoothing. No left-right flips: the model must keep kidney
laterality. Loss is Dice + cross-entropy; every epoch the validation cases are segmented with
sliding windows and the Dice of each label printed and stored; the best epoch's weights are kept.
A checkpoint after every epoch (``OUT/.train/<stage>.ckpt``) lets ``resume`` continue.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from lkseg.progress import CancelToken, ProgressCallback, report
from lkseg.train.preprocess import PreparedCase

__all__ = ["StageConfig", "StageResult", "train_stage"]

log = logging.getLogger(__name__)


@dataclass
class StageConfig:
    """Settings of one stage's training.

    Attributes:
        name: ``"fine"`` or ``"coarse"``.
        spacing: (si, sj, sk) mm of the stage grid.
        patch_size: (pi, pj, pk) voxels of the training patch (each a multiple of the network's
            total stride, 2 ** (levels - 1)).
        channels: feature channels per U-Net level.
        num_res_units: residual units per level.
        epochs, iters_per_epoch, batch_size: length of training (batch = patches per step).
        lr: peak learning rate (AdamW, linear warm-up then cosine decay).
        weights_dtype: dtype the weights are stored in.
        max_minutes: wall-time budget; the learning-rate schedule follows whichever of steps or
            time is further along, and training ends (with a final validation) when either is spent,
            never before one step.
    """

    name: str = "fine"
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    patch_size: tuple[int, int, int] = (96, 96, 96)
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    num_res_units: int = 2
    epochs: int = 50
    iters_per_epoch: int = 100
    batch_size: int = 2
    lr: float = 2e-3
    weights_dtype: str = "float32"
    max_minutes: float | None = None


@dataclass
class StageResult:
    """The trained network (best validation epoch) and its history."""

    net: object
    best_dice: dict[str, float]
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _transforms(config: StageConfig, num_classes: int, ratios: list[float]):
    from monai import transforms as T

    patch_zyx = tuple(reversed(config.patch_size))
    return T.Compose(
        [
            T.RandCropByLabelClassesd(
                keys=["image", "label"],
                label_key="label",
                spatial_size=patch_zyx,
                ratios=ratios,
                num_classes=num_classes,
                num_samples=1,
                indices_key="indices",
                allow_smaller=True,
            ),
            T.SpatialPadd(keys=["image", "label"], spatial_size=patch_zyx, mode="constant", value=0),
            T.RandAffined(
                keys=["image", "label"],
                prob=0.3,
                rotate_range=(0.25, 0.15, 0.15),
                scale_range=(0.15, 0.15, 0.15),
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
            T.RandGaussianNoised(keys=["image"], prob=0.2, std=0.1),
            T.RandGaussianSmoothd(
                keys=["image"], prob=0.15, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)
            ),
            T.RandScaleIntensityd(keys=["image"], factors=0.15, prob=0.3),
            T.RandShiftIntensityd(keys=["image"], offsets=0.15, prob=0.3),
            T.RandAdjustContrastd(keys=["image"], prob=0.2, gamma=(0.75, 1.4)),
            T.EnsureTyped(keys=["image", "label"], dtype=None, track_meta=False),
        ]
    )


class _PatchDataset:
    """Map-style dataset: item n is one augmented patch of case ``n % len(cases)``."""

    def __init__(self, items: list[dict], length: int, transform):
        self.items, self.length, self.transform = items, length, transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, n: int):
        out = self.transform(dict(self.items[n % len(self.items)]))
        out = out[0] if isinstance(out, list) else out
        return out["image"].float(), out["label"].long()


def _items(cases: list[PreparedCase], num_classes: int) -> list[dict]:
    from monai.transforms import map_classes_to_indices

    items = []
    for case in cases:
        lab = case.labels[None]
        indices = map_classes_to_indices(lab, num_classes=num_classes)
        items.append({"image": case.image[None], "label": lab, "indices": indices})
    return items


def _class_ratios(cases: list[PreparedCase], num_classes: int) -> list[float]:
    present = np.zeros(num_classes, dtype=bool)
    for case in cases:
        present |= np.bincount(case.labels.reshape(-1), minlength=num_classes)[:num_classes] > 0
    ratios = [1.0 if present[c] else 0.0 for c in range(num_classes)]
    ratios[0] = 0.5
    return ratios


def _dice_per_label(pred: np.ndarray, ref: np.ndarray, table: dict[int, str]) -> dict[str, float]:
    out = {}
    for value, name in table.items():
        a, b = pred == value, ref == value
        total = int(a.sum()) + int(b.sum())
        if int(b.sum()) == 0:
            continue  # Dice undefined for a label absent from the reference
        out[name] = 2.0 * int((a & b).sum()) / total
    return out


def _validate(
    net, cases: list[PreparedCase], config: StageConfig, table: dict[int, str], device, amp: bool
) -> dict[str, float]:
    import torch
    from monai.inferers import sliding_window_inference

    from lkseg.auto.window import plan_windows

    per_label: dict[str, list[float]] = {}
    net.eval()
    with torch.inference_mode():
        for case in cases:
            x = torch.from_numpy(case.image)[None, None].to(device)
            # the predictor's windows (up to 1.5x the patch, fewest overlapping voxels), so validation
            # measures what inference will do, and stays cheap on a CPU
            roi, overlap = plan_windows(case.image.shape, tuple(reversed(config.patch_size)), 0.25)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                out = sliding_window_inference(x, roi, 1, net, overlap=overlap, mode="gaussian")
            pred = out.float().argmax(1)[0].cpu().numpy().astype(np.uint8)
            for name, d in _dice_per_label(pred, case.labels, table).items():
                per_label.setdefault(name, []).append(d)
    net.train()
    return {name: round(float(np.mean(v)), 4) for name, v in per_label.items()}


def _lr_factor(fraction: float, warmup: float = 0.02) -> float:
    """Linear warm-up over the first ``warmup`` of training, then cosine decay to 2%."""
    if fraction < warmup:
        return max(0.05, fraction / warmup)
    t = (fraction - warmup) / (1.0 - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_stage(
    config: StageConfig,
    train_cases: list[PreparedCase],
    val_cases: list[PreparedCase],
    table: dict[int, str],
    device,
    options: dict,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> StageResult:
    """Train one stage network.

    Args:
        config: the stage's settings.
        train_cases / val_cases: preprocessed, normalised cases on the stage grid.
        table: model label value -> structure name (channel 0 is background).
        device: torch device.
        options: ``seed``, ``workers``, ``amp``, ``checkpoint`` (path or None), ``resume`` (bool),
            ``progress_bar`` (bool), ``init_state`` (state dict to start from, or None).
        progress / cancel: progress callback and cancel token (checked every step).
    """
    import torch
    from monai.losses import DiceCELoss
    from torch.utils.data import DataLoader

    from lkseg.models.networks import build_network, unet_spec

    # a case without some class (no tumour) is normal; MONAI warns for every such crop
    warnings.filterwarnings("ignore", message="no available indices of class")
    seed = int(options.get("seed", 0))
    torch.manual_seed(seed)
    np.random.seed(seed)
    num_classes = max(table) + 1
    net = build_network(unet_spec(num_classes, config.channels, config.num_res_units))
    if options.get("init_state") is not None:
        net.load_state_dict(options["init_state"])
        log.info("stage %s starts from the given weights", config.name)
    net = net.to(device).train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-5)
    total_steps = config.epochs * config.iters_per_epoch
    budget = config.max_minutes * 60.0 if config.max_minutes else None
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    amp = bool(options.get("amp", True)) and device.type == "cuda"

    history: list[dict] = []
    best = {"score": -1.0, "epoch": -1, "dice": {}, "state": None}
    start_epoch, step_count, elapsed_before = 0, 0, 0.0
    ckpt_path = options.get("checkpoint")
    if options.get("resume") and ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("config") != _config_key(config, table):
            log.warning("checkpoint %s was made with other settings; starting this stage afresh", ckpt_path)
        else:
            net.load_state_dict(ckpt["model"])
            optimiser.load_state_dict(ckpt["optimiser"])
            step_count, elapsed_before = int(ckpt["steps"]), float(ckpt["elapsed"])
            start_epoch = int(ckpt["epoch"]) + 1
            history = list(ckpt["history"])
            best.update(
                score=float(ckpt["best_score"]),
                epoch=int(ckpt["best_epoch"]),
                dice=dict(ckpt["best_dice"]),
                state=ckpt["best_state"],
            )
            log.info("resuming stage %s at epoch %d", config.name, start_epoch + 1)

    workers = int(options.get("workers", 0))
    dataset = _PatchDataset(
        _items(train_cases, num_classes),
        config.iters_per_epoch * config.batch_size,
        _transforms(config, num_classes, _class_ratios(train_cases, num_classes)),
    )
    loader_kwargs = {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": device.type == "cuda"}
    if workers > 0:
        import multiprocessing as mp

        loader_kwargs["multiprocessing_context"] = (
            mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        )
        loader_kwargs["prefetch_factor"] = 4
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, drop_last=True, **loader_kwargs)
    t_start = time.perf_counter()
    show_bar = bool(options.get("progress_bar", sys.stderr.isatty()))
    out_of_time = False

    def fraction_done() -> float:
        by_steps = step_count / max(1, total_steps)
        if budget is None:
            return by_steps
        return max(by_steps, (elapsed_before + time.perf_counter() - t_start) / budget)

    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(seed * 1000 + epoch)
        losses = []
        bar = _bar(len(loader), f"{config.name} epoch {epoch + 1}/{config.epochs}", show_bar)
        for step, (x, y) in enumerate(loader):
            if cancel is not None:
                cancel.raise_if_cancelled()
            done = fraction_done()
            # a stage always takes one step, however short its budget: a loaded machine can spend
            # the whole budget building the first batch, and a stage that never trained is no model
            if done >= 1.0 and step_count > 0:
                out_of_time = True
                break
            done = min(done, 1.0)
            for group in optimiser.param_groups:
                group["lr"] = config.lr * _lr_factor(done)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            optimiser.step()
            step_count += 1
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            report(
                progress,
                (epoch + (step + 1) / len(loader)) / config.epochs,
                f"{config.name} epoch {epoch + 1}/{config.epochs}",
            )
        if bar is not None:
            bar.close()
        if not losses:  # the budget ran out at an epoch boundary
            if out_of_time:
                log.info(
                    "stage %s: time budget of %.1f min spent after %d steps",
                    config.name,
                    config.max_minutes,
                    step_count,
                )
            break
        dice = _validate(net, val_cases, config, table, device, amp) if val_cases else {}
        score = float(np.mean(list(dice.values()))) if dice else -float(np.mean(losses))
        entry = {
            "epoch": epoch + 1,
            "loss": round(float(np.mean(losses)), 4),
            "val_dice": dice,
            "seconds": round(time.perf_counter() - t_start, 1),
        }
        history.append(entry)
        log.info("stage %s epoch %d: loss %.4f, validation Dice %s", config.name, epoch + 1, entry["loss"], dice)
        if options.get("print_epochs", True):
            print(
                f"[{config.name}] epoch {epoch + 1}/{config.epochs} loss {entry['loss']:.4f} val Dice "
                + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()),
                flush=True,
            )
        if score > best["score"]:
            best.update(
                score=score,
                epoch=epoch + 1,
                dice=dice,
                state=copy.deepcopy({k: v.detach().cpu() for k, v in net.state_dict().items()}),
            )
        if ckpt_path is not None:
            progress_state = {"steps": step_count, "elapsed": elapsed_before + time.perf_counter() - t_start}
            _save_checkpoint(
                ckpt_path, net, optimiser, progress_state, epoch, history, best, _config_key(config, table)
            )
        if out_of_time:
            log.info(
                "stage %s: time budget of %.1f min spent after %d steps", config.name, config.max_minutes, step_count
            )
            break
    if best["state"] is not None:
        net.load_state_dict(best["state"])
    net.eval()
    return StageResult(net, best["dice"], best["epoch"], history, time.perf_counter() - t_start)


def _config_key(config: StageConfig, table: dict[int, str]) -> dict:
    key = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    key["labels"] = {str(k): v for k, v in table.items()}
    return key


def _save_checkpoint(path, net, optimiser, progress_state, epoch, history, best, config_key) -> None:
    import torch

    from lkseg.io.atomic import atomic_path

    state = {
        "model": net.state_dict(),
        "optimiser": optimiser.state_dict(),
        "steps": progress_state["steps"],
        "elapsed": progress_state["elapsed"],
        "epoch": epoch,
        "history": history,
        "best_score": best["score"],
        "best_epoch": best["epoch"],
        "best_dice": best["dice"],
        "best_state": best["state"],
        "config": config_key,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _bar(total: int, desc: str, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)
