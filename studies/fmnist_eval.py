"""The Fashion-MNIST study's measurements: trained models found on disk, and per-cell results on
the serving path, cached so that a rerun (or a later session) computes only what is missing.

A *cell* is (model, arm, chip instance, age, GDC on/off): the per-image correctness of that
chip at that age on the first ``n_images`` test images, stored as packed bits (1 bit per image,
1 250 bytes for the 10 000 test images) in ``<cache>/<digest>/<arm>-<profile hash>-n<N>/``.
The model's floating-point (digital ONNX, onnxruntime) correctness is cell ``fp``. Every number
comes from ``chipsim.compiler.program_onnx`` + ``chipsim.runtime.ChipRuntime`` (no torch):
chip instance ``k`` is programming seed ``k``, read-out seed 0, per-MVM noise seed ``k`` with
one noise chunk per batch (so batches get independent noise, and a cell is reproducible).
Files are written whole and renamed, so an interrupted run leaves no half cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from chipsim import get_profile
from chipsim.modes import DEFAULT_MVM_NOISE, ColumnScaling
from studies.common import AGE_SCHEDULE, REPO

#: Default cache of cells (git-ignored ``runs/``).
CACHE_DIR = REPO / "runs" / "fmnist-cells"
#: Bump when what a cell means changes (seeding, batching): old cells are then not reused.
#: 2: per-MVM noise from the service's default sampler (:data:`CELL_NOISE`) instead of the exact one.
CELL_VERSION = 2
#: The cells' per-MVM noise: the serving path's own default sampler (``fresh-q16``: a draw per
#: output, a marginal within 2^-16 of N(0, 1) in CDF; chipsim.mvm_noise). The exact ziggurat
#: (:data:`studies.common.STUDY_NOISE`) took 39 % of a ResNet cell's CPU (2.6 of 6.6 s for 2 000
#: images, cProfile, 2026-12-01), this one 0.6 of 5.0 s; part of the cells' key.
CELL_NOISE = DEFAULT_MVM_NOISE
#: Images per runtime call (one per-MVM noise chunk each).
BATCH = 500
#: Order in which ages are computed: the targets' ages first, so that a run stopped by its
#: time budget has the cells the issue's targets need.
AGE_PRIORITY = ("1 y", "1 d", "1 s", "10 y", "1 h", "1 w", "30 d")
#: Analysis arms: how the chip is programmed.
ARMS = tuple(str(c) for c in ColumnScaling)
GDC_KEYS = ("on", "off")
#: How models.train_fmnist's ``agedchip.dataset`` metadata starts.
DATASET_PREFIX = "Fashion-MNIST"


@dataclass(frozen=True)
class TrainedModel:
    """One trained model: its ONNX bytes' digest, architecture, training mode and seed (from
    the ``agedchip.recipe`` metadata written by ``models.train_fmnist``), and its files."""

    arch: str
    mode: str
    seed: int
    onnx_path: Path
    digest: str
    clip_sigma: float | None = None
    #: ``model.pt`` of a copy of the same ONNX file found elsewhere (e.g. the zoo's file and its
    #: training run's folder), when none lies beside ``onnx_path``
    torch_file: Path | None = None

    @property
    def key(self) -> str:
        return f"{self.arch}-{self.mode}-s{self.seed}"

    @property
    def torch_path(self) -> Path | None:
        """``model.pt`` beside the ONNX file or beside a copy of it (the µ study needs it), if there."""
        p = self.onnx_path.parent / "model.pt"
        return p if p.is_file() else self.torch_file


def _read_model(path: Path) -> TrainedModel | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    raw = meta.get("agedchip.recipe")
    if raw is None or not meta.get("agedchip.dataset", "").startswith(DATASET_PREFIX):
        return None  # not a model of models.train_fmnist (the digits zoo carries a recipe too)
    recipe = json.loads(raw)
    if "mode" not in recipe:
        return None
    return TrainedModel(
        arch=str(recipe["arch"]),
        mode=str(recipe["mode"]),
        seed=int(recipe["seed"]),
        onnx_path=path,
        digest=hashlib.sha256(path.read_bytes()).hexdigest()[:16],
        clip_sigma=recipe.get("clip_sigma"),
    )


def find_models(paths: Sequence[Path], archs: Sequence[str] | None = None) -> list[TrainedModel]:
    """Fashion-MNIST models (ONNX with ``agedchip.dataset`` = Fashion-MNIST and an
    ``agedchip.recipe`` naming arch, mode and seed) under ``paths`` (files or
    folders, searched recursively), one per (arch, mode, seed), sorted. The same file found twice
    counts once, under the path found first (list the zoo first to report the committed files) and
    with the ``model.pt`` of any of its copies; two different files for one (arch, mode, seed) raise
    ``ValueError`` naming them."""
    found: dict[str, TrainedModel] = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(root.rglob("*.onnx")) if root.is_dir() else []
        for f in files:
            m = _read_model(f)
            if m is None or (archs and m.arch not in archs):
                continue
            old = found.get(m.key)
            if old is not None and old.digest != m.digest:
                raise ValueError(
                    f"two models for {m.key}: {old.onnx_path} and {m.onnx_path}; pass --models to pick one"
                )
            if old is None:
                found[m.key] = m
            elif old.torch_path is None and m.torch_path is not None:
                found[m.key] = replace(old, torch_file=m.torch_path)
    return sorted(found.values(), key=lambda m: (m.arch, m.mode, m.seed))


# --------------------------------------------------------------------------- the cache
def profile_hash(profile_name: str) -> str:
    dump = json.dumps(get_profile(profile_name).model_dump(), sort_keys=True, default=str)
    return hashlib.sha256(f"{dump}|v{CELL_VERSION}|b{BATCH}|{CELL_NOISE}".encode()).hexdigest()[:8]


@dataclass(frozen=True)
class CellStore:
    """Where the cells of one profile and image count live."""

    root: Path
    profile_name: str
    n_images: int

    def folder(self, model: TrainedModel, arm: str) -> Path:
        return self.root / model.digest / f"{arm}-{profile_hash(self.profile_name)}-n{self.n_images}"

    def path(self, model: TrainedModel, arm: str, chip: int, age: str, gdc: str) -> Path:
        return self.folder(model, arm) / f"c{chip:03d}-{age.replace(' ', '')}-gdc{gdc}.npy"

    def fp_path(self, model: TrainedModel) -> Path:
        return self.root / model.digest / f"fp-n{self.n_images}.npy"

    @staticmethod
    def save(path: Path, correct: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.packbits(np.asarray(correct, bool)))
        os.replace(tmp, path)

    def load(self, path: Path) -> np.ndarray | None:
        if not path.is_file():
            return None
        return np.unpackbits(np.load(path), count=self.n_images).astype(bool)


# --------------------------------------------------------------------------- evaluation
def fp_correct(model: TrainedModel, x: np.ndarray, y: np.ndarray, threads: int = 1) -> np.ndarray:
    """Per-image correctness of the floating-point model (the ONNX file under onnxruntime)."""
    from chipsim.ort_session import cpu_session

    sess = cpu_session(model.onnx_path.read_bytes(), threads)
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: x[i : i + BATCH]})[0].argmax(1) for i in range(0, len(x), BATCH)]
    return np.concatenate(out) == y


def chip_correct(runtime, x: np.ndarray, y: np.ndarray, chip: int, age_s: float, gdc: bool) -> np.ndarray:
    """Per-image correctness of one programmed chip (``ChipRuntime``) at ``age_s`` seconds."""
    hits = []
    for j, i in enumerate(range(0, len(x), BATCH)):
        logits = runtime.run(x[i : i + BATCH], age_s, read_seed=0, gdc=gdc, seed=chip, chunk=j)[0]
        hits.append(logits.argmax(1) == y[i : i + BATCH])
    return np.concatenate(hits)


#: Chip instances per model: one count for every architecture, or a count per architecture.
ChipCounts = int | Mapping[str, int]


@dataclass(frozen=True)
class Curve:
    """Ages beyond the tables' for the accuracy-vs-age figure, evaluated for one arm only (the
    first, max scaling by default) and, when ``archs`` is given, only those architectures: the
    figure's long age axis at a fraction of the cells every arm at every age would cost."""

    ages: tuple[str, ...] = ()
    archs: frozenset[str] | None = None  # None: every architecture
    arm: str = "max"
    #: the curve's ages get every chip, as the tables' ages do (``--extra-chips`` then cuts only the other arms)
    every_chip: bool = False

    def ages_for(self, arch: str, arm: str, ages: Sequence[str]) -> list[str]:
        """The ages of ``arch``'s cells of ``arm``: the tables' ``ages``, and the curve's."""
        if arm != self.arm or (self.archs is not None and arch not in self.archs):
            return list(ages)
        return list(ages) + [a for a in self.ages if a not in ages]


#: No ages beyond the tables'.
NO_CURVE = Curve()


def chips_for(chips: ChipCounts, arch: str) -> int:
    """How many chip instances ``arch``'s models get under ``chips``."""
    return chips if isinstance(chips, int) else chips[arch]


def is_core(arm: str, age: str, arms: Sequence[str], ages: Sequence[str], curve: Curve = NO_CURVE) -> bool:
    """A cell of the first arm at one of the tables' ages (or of the curve's, when it gets
    ``every_chip``): every chip gets these; ``extra_chips`` limits the others (the other arms, the
    curve's ages) to the first chips."""
    return arm == arms[0] and (age in ages or (curve.every_chip and arm == curve.arm and age in curve.ages))


def missing_cells(
    store: CellStore,
    models: Sequence[TrainedModel],
    arms: Sequence[str],
    chips: ChipCounts,
    ages: Sequence[str],
    shard: tuple[int, int] = (0, 1),
    curve: Curve = NO_CURVE,
    extra_chips: int | None = None,
) -> Iterator[tuple[int, TrainedModel, str, list[tuple[str, str]]]]:
    """(chip, model, arm, [(age, gdc) …]) still to compute, chip-major (every model gets chip 0
    before any gets chip 1, so a stopped run leaves comparable data), ages by :data:`AGE_PRIORITY`
    (the curve's ages after the tables'). ``shard = (i, n)``: only chips ``k`` with ``k % n == i``
    (n processes share the work). ``extra_chips``: chips ``k ≥ extra_chips`` get only the core
    cells (:func:`is_core`)."""
    most = max((chips_for(chips, m.arch) for m in models), default=0)
    for chip in range(shard[0], most, shard[1]):
        core_only = extra_chips is not None and chip >= extra_chips
        for m in models:
            if chip >= chips_for(chips, m.arch):
                continue
            for arm in arms:
                order = _priority(ages) + _priority([a for a in curve.ages_for(m.arch, arm, ages) if a not in ages])
                if core_only:
                    order = [a for a in order if is_core(arm, a, arms, ages, curve)]
                todo = [(a, g) for a in order for g in GDC_KEYS if not store.path(m, arm, chip, a, g).is_file()]
                if todo:
                    yield chip, m, arm, todo


def _priority(ages: Sequence[str]) -> list[str]:
    return [a for a in AGE_PRIORITY if a in ages] + [a for a in ages if a not in AGE_PRIORITY]


@dataclass
class EvalLog:
    """What :func:`evaluate` did: cells computed, cells left for lack of time, seconds per cell."""

    computed: int = 0
    left: int = 0
    cell_seconds: list[float] | None = None


def evaluate(
    store: CellStore,
    models: Sequence[TrainedModel],
    arms: Sequence[str],
    chips: ChipCounts,
    ages: Sequence[str],
    threads: int = 1,
    budget_s: float | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    curve: Curve = NO_CURVE,
    extra_chips: int | None = None,
) -> EvalLog:
    """Compute every missing cell (and each model's ``fp`` cell), within ``budget_s`` seconds
    if given (the cell under way is finished; the rest is left for the next run); ``extra_chips``
    as in :func:`missing_cells`."""
    from tqdm.auto import tqdm

    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime
    from models import fmnist_data as D

    test = D.load_split("test", store.n_images)
    t0 = time.perf_counter()
    for m in models:
        if not store.fp_path(m).is_file():
            store.save(store.fp_path(m), fp_correct(m, test.x, test.y, threads))
    todo = list(missing_cells(store, models, arms, chips, ages, shard, curve, extra_chips))
    log = EvalLog(cell_seconds=[])
    total = sum(len(cells) for *_, cells in todo)
    profile = get_profile(store.profile_name)
    with tqdm(total=total, desc="fmnist cells", unit="cell", disable=not progress) as bar:
        for chip, m, arm, cells in todo:
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
            state = program_onnx(
                m.onnx_path.read_bytes(), profile, seed=chip, chip_id=f"fmnist-{chip}", column_scaling=arm
            )
            rt = ChipRuntime(state, threads=threads, noise=CELL_NOISE)
            for age, gdc in cells:
                if budget_s is not None and time.perf_counter() - t0 > budget_s:
                    break
                t = time.perf_counter()
                c = chip_correct(rt, test.x, test.y, chip, AGE_SCHEDULE[age], gdc == "on")
                store.save(store.path(m, arm, chip, age, gdc), c)
                log.cell_seconds.append(time.perf_counter() - t)
                log.computed += 1
                bar.set_postfix(model=m.key, arm=arm, chip=chip, age=age, gdc=gdc)
                bar.update(1)
    log.left = total - log.computed
    return log


def complete_chips(
    store: CellStore,
    models: Sequence[TrainedModel],
    arms: Sequence[str],
    chips: ChipCounts,
    ages: Sequence[str],
    curve: Curve = NO_CURVE,
    extra_chips: int | None = None,
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """({arch: complete chips}, {arch: chips complete in the other cells too}). A chip is complete
    when every cell of every model of that architecture is cached: every arm and age (the curve's
    included), or with ``extra_chips`` the core cells (:func:`is_core`) only; the second list is
    then the longest prefix of the first, at most ``extra_chips`` long, whose chips have every other
    cell too (so that comparisons with the other cells pair the same chips). Without
    ``extra_chips`` both lists are the same."""

    def done(arch: str, k: int, core: bool) -> bool:
        return all(
            store.path(m, a, k, age, g).is_file()
            for m in models
            if m.arch == arch
            for a in arms
            for age in curve.ages_for(arch, a, ages)
            if is_core(a, age, arms, ages, curve) == core
            for g in GDC_KEYS
        )

    used, extra = {}, {}
    for arch in sorted({m.arch for m in models}):
        n = chips_for(chips, arch)
        if extra_chips is None:
            used[arch] = extra[arch] = [k for k in range(n) if done(arch, k, True) and done(arch, k, False)]
            continue
        used[arch] = [k for k in range(n) if done(arch, k, True)]
        j = 0
        while j < min(len(used[arch]), extra_chips) and done(arch, used[arch][j], False):
            j += 1
        extra[arch] = used[arch][:j]
    return used, extra


def load_cells(
    store: CellStore,
    models: Sequence[TrainedModel],
    arms: Sequence[str],
    chips: ChipCounts,
    ages: Sequence[str],
    curve: Curve = NO_CURVE,
    extra_chips: int | None = None,
    complete: tuple[dict[str, list[int]], dict[str, list[int]]] | None = None,
) -> tuple[dict, dict[str, np.ndarray], dict[str, list[int]]]:
    """({(model key, arm, age, gdc): bool (K, N)}, {model key: fp bool (N,)}, {arch: chips used}):
        an architecture's chips used are its complete chips (:func:`complete_chips`), so that every
        comparison, which stays within one architecture, is paired over the same chip instances. With
        ``extra_chips`` the cells other than the core ones hold only the chips of the second list of
        :func:`complete_chips`, the first ``K'`` of the chips used. ``complete``: that function's result
    for these arguments, when the caller has it already."""
    used, extra = complete or complete_chips(store, models, arms, chips, ages, curve, extra_chips)

    def chips_of(arch: str, arm: str, age: str) -> list[int]:
        return used[arch] if is_core(arm, age, arms, ages, curve) else extra[arch]

    cells = {
        (m.key, a, age, g): np.stack([store.load(store.path(m, a, k, age, g)) for k in chips_of(m.arch, a, age)])
        if chips_of(m.arch, a, age)
        else np.zeros((0, store.n_images), bool)
        for m in models
        for a in arms
        for age in curve.ages_for(m.arch, a, ages)
        for g in GDC_KEYS
    }
    fp = {m.key: store.load(store.fp_path(m)) for m in models if store.fp_path(m).is_file()}
    return cells, fp, used
