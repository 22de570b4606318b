"""torchxrayvision's published models: the authors' race model and open sex and age models.

* ``race``: ``xrv.baseline_models.emory_hiti.RaceModel``, the ResNet-34 of Gichoya et al. 2022
  (Lancet Digital Health 4:e406) trained on MIMIC-CXR, 320 px, log-probabilities over
  Asian, Black, White (self-reported race).
* ``sex``: ``xrv.baseline_models.mira.SexModel`` (ResNet-34, CheXpert, 224 px; Glocker et al.
  2023, eBioMedicine 89:104467), logits over Male, Female.
* ``age``: ``xrv.baseline_models.riken.AgeModel`` (TorchScript SE-ResNeXt, NIH, 320 px; Ieki et
  al. 2022, Communications Medicine), age in years.

The library's own ``forward`` runs (it resizes, rescales [-1024, 1024] to the model's input
and normalises); this module only replaces how the weights arrive. The library downloads them
to a hard-coded ``~/.torchxrayvision`` with no checksum; here they live in
``$CXRLAB_DATA/published/`` (:func:`weights_path`), are checked by SHA-256 and loaded with
``torch.load(..., weights_only=True)`` (the age model is a TorchScript archive, read with
``torch.jit.load`` after the same check). The library publishes no checksums, so the first
download records the file's SHA-256 in ``$CXRLAB_DATA/published/SHA256SUMS`` and says so; every
later load is checked against that record (trust on first use; :data:`MODELS` carries a pin
once one is known). Without network, loading gives one sentence naming the file to download
and where to put it.

Preprocessing is the library's documented recipe (its README): 8-bit image ->
``xrv.datasets.normalize(img, 255)`` (to [-1024, 1024]) -> ``XRayCenterCrop`` (square) ->
``XRayResizer(native resolution)``.

>>> MODELS["race"].targets
('Asian', 'Black', 'White')
>>> weights_path("race").name
'resnet_race_detection_val-loss_0.157_mimic_public.pt'
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrlab.core import metrics
import data_fetch.download
from data_fetch.download import ChecksumError, DownloadError, file_digest
from data_fetch.paths import data_root

RELEASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1"
PIN_FILE = "SHA256SUMS"
#: Fewer patients of a class than this in the test set, and its one-vs-rest AUC is not reported.
MIN_PATIENTS = 5
INSTALL_HINT = 'pip install -e ".[real]"   (torchxrayvision 1.5.7)'


@dataclass(frozen=True)
class PublishedModel:
    """One published torchxrayvision model and where its weights come from."""

    key: str
    title: str
    xrv_class: str
    filename: str
    resolution: int
    targets: tuple[str, ...]
    output: str                    # "log_probabilities", "logits" or "years"
    citation: str
    sha256: str | None = None      # unknown until a first download records it (see module doc)

    @property
    def url(self) -> str:
        """Where torchxrayvision's release publishes the weights."""
        return f"{RELEASE}/{self.filename}"


MODELS: dict[str, PublishedModel] = {m.key: m for m in (
    PublishedModel("race", "Emory HITI race model (ResNet-34, MIMIC-CXR)",
                   "baseline_models.emory_hiti.RaceModel",
                   "resnet_race_detection_val-loss_0.157_mimic_public.pt", 320,
                   ("Asian", "Black", "White"), "log_probabilities",
                   "Gichoya et al. 2022, Lancet Digital Health 4:e406"),
    PublishedModel("sex", "MIRA sex model (ResNet-34, CheXpert)", "baseline_models.mira.SexModel",
                   "mira_sex_resnet-all_epoch_13-step_7125.ckpt", 224, ("Male", "Female"),
                   "logits", "Glocker et al. 2023, eBioMedicine 89:104467"),
    PublishedModel("age", "RIKEN age model (TorchScript, NIH)", "baseline_models.riken.AgeModel",
                   "baseline_models_riken_xray_age_every_model_age_senet154_v2_tl_26_ft_7_fp32.pt",
                   320, ("Age",), "years", "Ieki et al. 2022, Communications Medicine 2:159"),
)}


class WeightsUnavailable(RuntimeError):
    """The weights are not on disk and could not be downloaded (one sentence says what to do)."""


# ----------------------------------------------------------------------------- weights
def weights_dir() -> Path:
    """``$CXRLAB_DATA/published``: where the published weights are cached."""
    return data_root() / "published"


def weights_path(key: str) -> Path:
    """The file the loader reads for model ``key`` (``race``, ``sex`` or ``age``)."""
    return weights_dir() / _spec(key).filename


def _spec(key: str) -> PublishedModel:
    if key not in MODELS:
        raise KeyError(f"unknown published model {key!r}; choose one of {', '.join(MODELS)}")
    return MODELS[key]


def recorded_pins() -> dict[str, str]:
    """``filename -> sha256`` recorded at first download (``sha256sum`` format on disk)."""
    path = weights_dir() / PIN_FILE
    if not path.exists():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            pins[parts[1].lstrip("*")] = parts[0].lower()
    return pins


def _record_pin(filename: str, digest: str) -> None:
    pins = {**recorded_pins(), filename: digest}
    path = weights_dir() / PIN_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{d}  {f}\n" for f, d in sorted(pins.items())))
    tmp.replace(path)


def expected_sha256(key: str) -> str | None:
    """The SHA-256 the weights must have: the pin in :data:`MODELS`, else the one recorded."""
    spec = _spec(key)
    return spec.sha256 or recorded_pins().get(spec.filename)


def offline_message(key: str) -> str:
    """The one sentence a machine without network gets."""
    spec = _spec(key)
    return (f"The {spec.title} weights are not on this machine and could not be downloaded: "
            f"download {spec.url} (with internet) and save it as {weights_path(key)}.")


def fetch_weights(key: str, url: str | None = None, progress: bool = True) -> Path:
    """Download model ``key``'s weights (resumable, atomic) and check or record their SHA-256.

    ``url`` replaces the release address (a mirror). Raises :class:`WeightsUnavailable` with one
    sentence when the download fails, ``ChecksumError`` when the file differs from its pin.
    """
    spec, dest = _spec(key), weights_path(key)
    expected = expected_sha256(key)
    try:
        data_fetch.download.download(url or spec.url, dest, sha256=expected, progress=progress,
                                     retries=2, backoff=0.5, desc=spec.filename)
    except ChecksumError:
        raise
    except (DownloadError, OSError) as err:
        raise WeightsUnavailable(f"{offline_message(key)} ({type(err).__name__})") from None
    if expected is None:
        digest = file_digest(dest, "sha256")
        _record_pin(spec.filename, digest)
        print(f"first download of {spec.filename}: SHA-256 {digest} recorded in "
              f"{weights_dir() / PIN_FILE}; later loads are checked against it")
    return dest


def verified_weights(key: str, download: bool = True, progress: bool = True) -> Path:
    """The path of model ``key``'s weights, checked against their SHA-256 (downloaded if allowed)."""
    path = weights_path(key)
    if not path.exists():
        if not download:
            raise WeightsUnavailable(offline_message(key))
        return fetch_weights(key, progress=progress)
    digest = file_digest(path, "sha256")
    expected = expected_sha256(key)
    if expected is None:
        _record_pin(path.name, digest)
        print(f"{path.name} was placed by hand: SHA-256 {digest} recorded in "
              f"{weights_dir() / PIN_FILE}")
    elif digest != expected:
        raise ChecksumError(f"SHA-256 of {path} is {digest}, expected {expected}: the file is "
                            "corrupt or not the published one; delete it and load again")
    return path


# ----------------------------------------------------------------------------- building
def _xrv() -> Any:
    try:
        import torchxrayvision
    except ImportError:
        raise ImportError(f"the published models need torchxrayvision: {INSTALL_HINT}") from None
    return torchxrayvision


def _library_class(spec: PublishedModel) -> type:
    obj = _xrv()
    for part in spec.xrv_class.split("."):
        obj = getattr(obj, part)
    return obj


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _safe_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError and friends
        raise RuntimeError(f"{path.name} holds more than tensors, so it is not loaded "
                           f"(weights_only=True refused it: {str(err).splitlines()[0][:160]})") from None


def _resnet34(head: nn.Module) -> nn.Module:
    import torchvision

    net = torchvision.models.resnet34(weights=None)
    net.fc = head
    return net


def _race_model(cls: type, path: Path) -> nn.Module:
    """The library's RaceModel (its forward and targets) with our verified weights."""
    import torchvision

    model = cls.__new__(cls)
    nn.Module.__init__(model)
    net = _resnet34(nn.Sequential(nn.Linear(512, 3), nn.LogSoftmax(dim=1)))
    net.load_state_dict(_strip_prefix(_safe_load(path), "module."))   # saved from DataParallel
    model.model = net.eval()
    model.targets = list(MODELS["race"].targets)
    model.mean, model.std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    model.norm = torchvision.transforms.Normalize(model.mean, model.std)
    return model


def _sex_model(cls: type, path: Path) -> nn.Module:
    """The library's SexModel with our weights (a Lightning checkpoint: ``state_dict``, ``model.``)."""
    model = cls(weights=False)
    ckpt = _safe_load(path)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    model.model.load_state_dict(_strip_prefix(state, "model."))
    model.model.eval()
    return model


def _age_model(cls: type, path: Path) -> nn.Module:
    """The library's AgeModel around the TorchScript archive (read after the SHA-256 check)."""
    import torchvision

    model = cls.__new__(cls)
    nn.Module.__init__(model)
    with warnings.catch_warnings():               # TorchScript is deprecated, still the format
        warnings.simplefilter("ignore", FutureWarning)
        model.model = torch.jit.load(str(path), map_location="cpu").eval()
    model.norm = torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return model


BUILDERS: dict[str, Callable[[type, Path], nn.Module]] = {
    "race": _race_model, "sex": _sex_model, "age": _age_model}


def load_published(key: str = "race", device: str = "cpu", download: bool = True,
                   progress: bool = True, path: Path | None = None) -> "Published":
    """Model ``key`` ready to predict, its weights verified (fetched first if allowed and missing).

    ``path`` loads another checkpoint of the same layout instead (a test or CI fixture); the
    published weights' cache and pins are then left alone.

    >>> # race = load_published("race"); proba = race.predict(images)   # (N, 3): Asian, Black, White
    """
    spec = _spec(key)
    path = Path(path) if path else verified_weights(key, download=download, progress=progress)
    # channels-last weights, as build_model gives the course's own models: the published ResNets
    # predict about 1.5x faster on a CPU at 320 px (bench/README.md), outputs equal to 5e-5
    net = BUILDERS[key](_library_class(spec), path).to(device, memory_format=torch.channels_last)
    return Published(spec, net.eval(), device)


# ----------------------------------------------------------------------------- predicting
def preprocess(images: np.ndarray, resolution: int) -> torch.Tensor:
    """``(N, 1, R, R)`` float tensor in [-1024, 1024], as torchxrayvision documents.

    ``images``: ``(N, H, W)`` uint8, or float with 0..1 for black..white (e.g. after
    :mod:`cxrlab.toolbox.degrade`). Each 8-bit image is normalised with ``xrv.datasets.normalize(img,
    255)``, a float image with the same formula (without its range check: a high-pass image
    has negative values, which are kept); then centre-cropped to a square
    (``XRayCenterCrop``) and resized to ``resolution`` (``XRayResizer``).
    """
    xrv = _xrv()
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    crop, resize = xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(resolution)
    out = np.empty((len(images), 1, resolution, resolution), dtype=np.float32)
    for i, img in enumerate(images):
        if img.dtype.kind == "f":
            normalized = ((2 * img.astype(np.float32) - 1.0) * 1024).astype(np.float32)
        else:
            normalized = xrv.datasets.normalize(img, 255)
        out[i] = resize(crop(normalized[None]))
    return torch.from_numpy(out)


@dataclass
class Published:
    """A loaded published model: ``predict`` returns probabilities (or years) in ``targets`` order."""

    spec: PublishedModel
    net: nn.Module
    device: str = "cpu"

    @property
    def targets(self) -> list[str]:
        """Output order: ``['Asian', 'Black', 'White']`` for the race model."""
        return list(self.spec.targets)

    def predict(self, images: np.ndarray, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                batch_size: int = 16, progress: bool = False) -> np.ndarray:
        """Probabilities ``(N, K)`` (race, sex) or ages ``(N,)`` for 8-bit images ``(N, H, W)``.

        ``transform`` (e.g. ``cxrlab.toolbox.degrade.LowPass(25)``) is applied to float ``(B, 1, H, W)``
        images in [0, 1] before the library's preprocessing, so degradations act on the image
        the model sees.
        """
        from tqdm.auto import tqdm

        outputs = []
        for start in tqdm(range(0, len(images), batch_size), desc=self.spec.key,
                          disable=not progress, leave=False):
            batch = np.asarray(images[start:start + batch_size])
            if transform is not None:
                floats = torch.from_numpy(batch.astype(np.float32) / 255.0)[:, None]
                batch = transform(floats)[:, 0].numpy()
            x = preprocess(batch, self.spec.resolution).to(self.device)
            with torch.inference_mode():
                outputs.append(self.net(x).float().cpu())
        raw = torch.cat(outputs) if outputs else torch.empty(0, len(self.targets))
        if self.spec.output == "log_probabilities":
            return raw.exp().numpy()
        if self.spec.output == "logits":
            return torch.softmax(raw, dim=1).numpy()
        return raw.reshape(-1).numpy()


@dataclass
class ClassSubset:
    """A published model that reports only some of its output columns (e.g. the classes with
    enough patients), for :func:`cxrlab.toolbox.sweeps.sweep_at_test_time`."""

    model: Published
    columns: list[int]

    def predict(self, images: np.ndarray, transform: Callable | None = None) -> np.ndarray:
        """The model's probabilities for ``columns`` only (not renormalised)."""
        return self.model.predict(images, transform=transform)[:, self.columns]


def load_images(manifest: pd.DataFrame, size: int) -> np.ndarray:
    """The manifest's stored PNGs as uint8 ``(N, size, size)`` (square-cropped, resized)."""
    from PIL import Image

    from data_fetch.sources._common import square_resize

    out = np.empty((len(manifest), size, size), dtype=np.uint8)
    for i, path in enumerate(manifest["abspath"]):
        with Image.open(path) as img:
            out[i] = np.asarray(square_resize(img, size))
    return out


# ----------------------------------------------------------------------------- evaluation
def race_targets(races: Sequence[Any], targets: Sequence[str] = MODELS["race"].targets) -> np.ndarray:
    """Class indices into the model's ``targets`` (-1 for a missing or other race)."""
    lookup = {t: i for i, t in enumerate(targets)}
    return np.array([lookup.get(r, -1) if isinstance(r, str) else -1 for r in races], dtype=np.int64)


def race_auc_report(proba: np.ndarray, races: Sequence[Any], patients: Sequence[Any],
                    targets: Sequence[str] = MODELS["race"].targets, n_boot: int = 200,
                    seed: int = 0, min_patients: int = MIN_PATIENTS) -> pd.DataFrame:
    """Per-class one-vs-rest AUC with patient-bootstrap 95% CIs (:func:`cxrlab.core.metrics.auc_table`).

    A class with fewer than ``min_patients`` patients gets no AUC: its ``result`` is a sentence
    saying so, and ``auc`` stays empty. Images whose race is not one of ``targets`` are left out.
    Columns: ``class, patients, images, auc, ci_low, ci_high, result``.
    """
    y = race_targets(races, targets)
    known = y >= 0
    patients = np.asarray(patients, dtype=object)
    table = metrics.auc_table(y[known], np.asarray(proba)[known], list(targets),
                              groups=patients[known], n_boot=n_boot, seed=seed)
    rows = []
    for j, row in enumerate(table.to_dict("records")):
        n_patients = len(set(patients[known][y[known] == j]))
        n_images = int((y[known] == j).sum())
        enough = n_patients >= min_patients and row["n_neg"] > 0
        result = (f"{row['auc']:.3f} (95% CI {row['ci_low']:.3f}-{row['ci_high']:.3f})" if enough
                  else f"no AUC: only {n_patients} {row['class']} patient(s) here (fewer than "
                       f"{min_patients}), too few for a meaningful estimate")
        rows.append({"class": row["class"], "patients": n_patients, "images": n_images,
                     "auc": row["auc"] if enough else None,
                     "ci_low": row["ci_low"] if enough else None,
                     "ci_high": row["ci_high"] if enough else None, "result": result})
    return pd.DataFrame(rows)


def reportable_classes(report: pd.DataFrame) -> list[str]:
    """The classes of :func:`race_auc_report` that have an AUC (enough patients)."""
    return [str(c) for c, auc in zip(report["class"], report["auc"]) if pd.notna(auc)]


def check_patients_per_class(answer: Any, races: Sequence[Any], patients: Sequence[Any],
                             classes: Sequence[str] = MODELS["race"].targets) -> None:
    """Self-check for chapter 7's exercise: distinct *patients* per class, not images."""
    assert isinstance(answer, dict), "my_patients must be a dict: class name -> number of patients"
    assert sorted(answer) == sorted(classes), f"use exactly these keys: {list(classes)}"
    frame = pd.DataFrame({"race": list(races), "patient": list(patients)})
    for c in classes:
        rows = frame[frame["race"] == c]
        want, images = rows["patient"].nunique(), len(rows)
        got = answer[c]
        assert not (got == images and images != want), (
            f"{c}: {got} is the number of images; count distinct patients (one patient has "
            "several radiographs, and the bootstrap resamples patients)")
        assert got == want, f"{c}: expected the number of distinct patients, got {got}"
    print("Correct: patients per class, as the bootstrap and the reporting rule count them.")


# ----------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cxrlab.published fetch race [sex age]``: download and pin the weights."""
    parser = argparse.ArgumentParser(prog="python -m cxrlab.published", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["fetch", "where"])
    parser.add_argument("models", nargs="*", help=f"any of {', '.join(MODELS)} (default: race)")
    args = parser.parse_args(argv)
    for key in args.models or ["race"]:
        if key not in MODELS:
            parser.error(f"unknown model {key!r}; choose from {', '.join(MODELS)}")
        try:
            path = verified_weights(key) if args.action == "fetch" else weights_path(key)
        except (WeightsUnavailable, ChecksumError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
