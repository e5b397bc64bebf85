"""Seeded, resumable training of the 2.5D node/region network on synthetic phantoms.

Cheap by design (DESIGN.md's probe: a naive 3D setup learned no node voxels in 20 CPU minutes):
2D in-plane convolutions, most patches centred on nodes, class-weighted Dice + cross-entropy,
AdamW with warm-up and cosine decay. All volumes are preprocessed once and kept in memory (on the
GPU when there is one), so an iteration costs only the crop and the network step.

Checkpoints (every `checkpoint_every` iterations, atomic) hold model, optimiser, sampler RNG and
iteration; `resume=True` continues a stopped run exactly where its last checkpoint was.
Imports no SimpleITK, so it runs wherever torch, MONAI, numpy and scipy do.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import conventions as C
from . import network
from .preprocess import prepare, resample_inplane


@dataclass
class TrainConfig:
    out: str
    n_cases: int = 120
    first_seed: int = 1  # training phantoms use seeds first_seed .. first_seed + n_cases - 1
    seed: int = 0  # sampler / initialisation seed
    iterations: int = 4000
    batch: int = 16
    patch: int = 192
    lr: float = 2e-3
    warmup: int = 200
    node_fraction: float = 0.7
    target_spacing: float = 0.7
    class_weights: tuple = (0.5, 1.0, 1.0, 1.0, 3.0, 3.0)
    checkpoint_every: int = 250
    device: str = "auto"
    workers: int = 0
    max_seconds: float = 0.0  # >0: stop (with a checkpoint) once training has run this long
    arch: dict = field(default_factory=lambda: dict(network.DEFAULT_ARCH))


def _prepare_case(args):
    seed, target_spacing = args
    from .. import phantom

    ph = phantom.generate(seed)
    t, crop, _ = prepare(ph.image, ph.spacing, target_spacing)
    lab = torch.from_numpy(ph.labels[:, crop.j0:crop.j1, crop.i0:crop.i1].astype(np.uint8))
    lab = resample_inplane(lab, tuple(t.shape[1:]), labels=True)
    return t.half(), lab


def _load_cases(cfg: TrainConfig, log: Callable[[str], None]):
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.n_cases))
    jobs = [(s, cfg.target_spacing) for s in seeds]
    t0 = time.time()
    if cfg.workers > 1:
        with ProcessPoolExecutor(cfg.workers) as ex:
            cases = list(ex.map(_prepare_case, jobs, chunksize=2))
    else:
        cases = []
        for n, j in enumerate(jobs):
            cases.append(_prepare_case(j))
            if (n + 1) % 10 == 0:
                log(f"phantoms {n + 1}/{len(jobs)}")
    log(f"prepared {len(cases)} phantoms in {time.time() - t0:.1f} s")
    return cases


class _Sampler:
    """Random 2.5D patches: most centred on node voxels, the rest anywhere in the crop."""

    def __init__(self, cases, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        p = cfg.patch // 2
        self.imgs, self.labs, self.node_vox = [], [], []
        for img, lab in cases:
            # Pad once so any centre yields a full patch; -5 is the normalised background floor.
            self.imgs.append(F.pad(img.float(), (p, p, p, p), value=-5.0).half().to(device))
            self.labs.append(F.pad(lab, (p, p, p, p), value=0).to(device))
            nv = torch.nonzero(lab >= C.NODE_NEGATIVE)
            self.node_vox.append(nv.to(device))
        self.with_nodes = [i for i, v in enumerate(self.node_vox) if len(v)]

    def batch(self, gen: torch.Generator):
        cfg = self.cfg
        P = cfg.patch
        xs, ys = [], []
        r = torch.rand(cfg.batch * 4, generator=gen).tolist()
        for b in range(cfg.batch):
            # Padded coordinates: a patch whose top-left corner is (j, i) is centred on the
            # unpadded voxel (j, i), because the padding is half a patch.
            if r[4 * b] < cfg.node_fraction and self.with_nodes:
                ci = self.with_nodes[int(r[4 * b + 1] * len(self.with_nodes))]
                k, j, i = self.node_vox[ci][int(r[4 * b + 2] * len(self.node_vox[ci]))].tolist()
                jit = torch.randint(-P // 3, P // 3 + 1, (2,), generator=gen).tolist()
                j, i = j + jit[0], i + jit[1]
            else:
                ci = int(r[4 * b + 1] * len(self.imgs))
                k = int(r[4 * b + 2] * self.labs[ci].shape[0])
                j = int(torch.randint(0, self.labs[ci].shape[1] - P + 1, (1,), generator=gen))
                i = int(torch.randint(0, self.labs[ci].shape[2] - P + 1, (1,), generator=gen))
            _, h, w = self.labs[ci].shape
            j, i = min(max(j, 0), h - P), min(max(i, 0), w - P)
            xs.append(self._crop(ci, k, j, i))
            ys.append(self.labs[ci][k, j:j + P, i:i + P])
        x = torch.stack(xs).float()
        y = torch.stack(ys).long()
        # Augment: left-right flip (labels carry no side), intensity scale/shift, noise.
        flip = torch.rand(cfg.batch, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        y[flip] = y[flip].flip(-1)
        sc = (0.9 + 0.2 * torch.rand(cfg.batch, 1, 1, 1, generator=gen)).to(x.device)
        sh = (-0.1 + 0.2 * torch.rand(cfg.batch, 1, 1, 1, generator=gen)).to(x.device)
        x = x * sc + sh
        return x, y

    def _crop(self, ci, k, j, i):
        P = self.cfg.patch
        vol = self.imgs[ci]
        z = vol.shape[0]
        ks = [min(max(k + d, 0), z - 1) for d in (-1, 0, 1)]
        return vol[ks, j:j + P, i:i + P]


def _loss(logits, y, weights):
    ce = F.cross_entropy(logits, y, weight=weights)
    prob = logits.softmax(1)
    onehot = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    dl = 1 - dice[1:][present[1:]].mean() if present[1:].any() else logits.sum() * 0
    return ce + dl


def resolve_device(name: str) -> torch.device:
    from ..errors import InputError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name in ("cuda", "gpu") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for but no CUDA GPU is available here; use --device cpu or auto")
        return torch.device("cuda" if name == "gpu" else name)
    raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")


def _save_atomic(obj, path: Path):
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def train(cfg: TrainConfig, resume: bool = True, log: Callable[[str], None] = print,
          stop_after: Optional[int] = None) -> Path:
    """Runs (or resumes) training; returns the checkpoint directory. `stop_after` ends early (tests)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = network.build(cfg.arch).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    ckpt_path = out / "checkpoint.pt"
    history = []
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=dev, weights_only=True)
        saved = json.loads(ck["config"])
        for key in ("n_cases", "first_seed", "seed", "patch", "batch", "target_spacing"):
            if saved[key] != asdict(cfg)[key]:
                raise RuntimeError(f"checkpoint {ckpt_path} was made with {key}={saved[key]}, "
                                   f"not {asdict(cfg)[key]}; use another --out or the same settings")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        start = int(ck["iteration"])
        history = json.loads(ck["history"])
        log(f"resumed from {ckpt_path} at iteration {start}")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
    if start >= cfg.iterations:
        return out
    cases = _load_cases(cfg, log)
    sampler = _Sampler(cases, cfg, dev)
    weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=dev)
    use_amp = dev.type == "cuda"

    def lr_at(it):
        if it < cfg.warmup:
            return cfg.lr * (it + 1) / cfg.warmup
        p = (it - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
        return 1e-5 + 0.5 * (cfg.lr - 1e-5) * (1 + math.cos(math.pi * p))

    def save_checkpoint(iteration):
        _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                      "iteration": iteration, "config": json.dumps(asdict(cfg)), "history": json.dumps(history)},
                     ckpt_path)

    model.train()
    t0 = time.time()
    run_loss = 0.0
    for it in range(start, cfg.iterations):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        x, y = sampler.batch(gen)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x)
        loss = _loss(logits.float(), y, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        opt.step()
        run_loss += float(loss.detach())
        done = it + 1
        if done % 50 == 0:
            history.append({"iteration": done, "loss": run_loss / 50, "elapsed_s": round(time.time() - t0, 1)})
            log(f"iteration {done}/{cfg.iterations} loss {run_loss / 50:.4f} "
                f"({(done - start) / (time.time() - t0):.2f} it/s)")
            run_loss = 0.0
        stopping = bool(stop_after and done - start >= stop_after)
        out_of_time = bool(cfg.max_seconds and time.time() - t0 > cfg.max_seconds and done < cfg.iterations)
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations or stopping or out_of_time:
            save_checkpoint(done)
        if out_of_time:
            log(f"time budget reached at iteration {done}; resume with the same command")
        if stopping or out_of_time:
            break
    return out


def export_weights(ckpt_dir: str | os.PathLike, model_dir: str | os.PathLike, model_id: str, version: str,
                   command: str) -> dict:
    """Writes model.pt (fp16 state dict) + manifest.json; returns the manifest."""
    from . import manifest as M

    ckpt_dir, model_dir = Path(ckpt_dir), Path(model_dir)
    ck = torch.load(ckpt_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    cfg = json.loads(ck["config"])
    # DynUNet's state dict names each skip-connected module twice; convert each storage once so
    # the aliases stay shared and the file holds every weight once.
    halves: dict = {}
    state = {}
    for k, v in ck["model"].items():
        if v.is_floating_point():
            key = (v.data_ptr(), tuple(v.shape))
            state[k] = halves.setdefault(key, v.half())
        else:
            state[k] = v
    model_dir.mkdir(parents=True, exist_ok=True)
    _save_atomic(state, model_dir / "model.pt")
    sha = hashlib.sha256((model_dir / "model.pt").read_bytes()).hexdigest()
    man = M.new_manifest(model_id=model_id, version=version, sha256=sha, arch=cfg["arch"],
                         target_spacing=cfg["target_spacing"], train_config=cfg, command=command,
                         iterations_done=int(ck["iteration"]), history=json.loads(ck["history"]))
    M.write_manifest(model_dir, man)
    return man
