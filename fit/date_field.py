"""The guide's error on a date, interpolated in space from the date's own visible pixels.

Temporal interpolation predicts a date from its neighbours in time; whatever made that date differ from
them (rain darkening the soil, a harvest, a phenology step, a thin haze or an illumination change over the
whole scene) shows on the date's *visible* pixels as a residual, observation − guide, that is smooth in
space. Next to a cloud, those residuals say how the hidden pixels differ from their interpolation too:
the field added to the guide is, per date and band, a normalised convolution of the visible residuals
with a Gaussian (:data:`DATE_FIELD_PX`), blended, where few visible pixels are near (deep inside a large
cloud), towards the mean residual of the date's visible pixels that are *most similar* to the pixel
(``similar``: its nearest neighbours in the space of the pixels' guide trajectories, so a field of one
crop takes what the same crop's visible fields did that day, wherever they are in the tile), shrunk
towards the date's mean residual, itself shrunk towards 0 when the date shows few pixels.

Visible pixels whose blue residual is a bright outlier of their date (haze and thin cloud the masks
missed) are left out of it. Every pixel's field is computed *without its own residual* (the kernel's
centre weight is removed and its own sample left out of the mean), so on a visible pixel the corrected
guide is still a prediction made as if that pixel were hidden, as the fit's leave-one-out guide
requires. (The haze test's threshold, the date's median and MAD of the blue residual, is taken over all
its visible pixels, the pixel's own one of them; only visible values ever enter, never a hidden one.)
A date with no visible pixel (fully clouded, or held out whole) gets no field: its guide is the
interpolation in time alone.

Measured on the quality suite's partly painted cases (docs/fit.md, "Suite: `fast` with the same-date
field"): +0.1 to +3.2 dB painted-region PSNR over linear interpolation with the same refined masks (the
guide alone, before any network).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree
from torch.nn import functional

#: Gaussian scale of the local residual field, in pixels: chosen on the quality suite's six partly painted
#: tuning cases (guide alone, mean over linear interpolation: 1 px +2.10 dB, 1.5 px +2.16, 2 px +1.99,
#: 3 px +1.63; docs/fit.md, "Suite: `fast` with the same-date field").
DATE_FIELD_PX = 1.5
#: The Gaussian is cut at this many scales (scipy's ``truncate``): 1.5 px -> a 13×13 px kernel.
DATE_FIELD_TRUNCATE = 4.0
#: Kernel mass of visible neighbours at which the local field and the date's mean residual weigh the
#: same (a pixel whose neighbours within ~1 px are all visible has a mass of ~0.3; deep in a cloud, ~0).
DATE_FIELD_SUPPORT = 0.05
#: A visible pixel whose blue residual lies more than this many robust standard deviations (1.4826 ×
#: median absolute deviation, plus :data:`DATE_FIELD_MAD_FLOOR`) above its date's median is left out of
#: the field: haze and thin cloud that the refined masks still call clear brighten blue most, and their
#: residuals would spread into the fill. On the quality suite's six partly painted tuning cases (the
#: guide alone, before any network; seed-free): oracle holes' mean / worst margin over the best baseline
#: +1.64 / -0.86 -> +1.66 / -0.31 dB, realistic masks' -0.65 / -1.50 -> -0.13 / -0.97 dB.
DATE_FIELD_HAZE_MADS = 2.0
#: Added to that robust standard deviation (reflectance), so a date of near-identical residuals does
#: not reject pixels over noise.
DATE_FIELD_MAD_FLOOR = 1e-3
#: The date's mean residual is shrunk by n / (n + DATE_FIELD_PRIOR) for n visible pixels: a date that
#: shows a handful of pixels moves its whole hidden part only a little.
DATE_FIELD_PRIOR = 100.0
#: Similar pixels are compared on this many principal components of their guide trajectories (every
#: date and band of the guide, each standardised). On the quality suite's six partly painted oracle tuning
#: cases (the guide alone, seeds 0-2: ``python bench/field.py --protocols oracle --components 4,8,16``),
#: 4, 8 and 16 components score within 0.03 dB of each other on the mean (+2.32, +2.30, +2.33 dB over the
#: best of linear and ridge); 8 leaves room for the more kinds of land cover a full tile holds than a
#: 24×24 px crop.
SIMILAR_COMPONENTS = 8
#: The components are fitted on at most this many pixels (a fixed draw beyond it; every pixel is then
#: projected): a full tile's 295k × 390 trajectory matrix would be ~0.5 GB.
SIMILAR_FIT_PIXELS = 20_000
#: At most this many of a date's visible pixels are candidates (a fixed draw beyond it): every pixel of
#: the date is searched against them (a k-d tree on a CPU, brute force on an accelerator).
SIMILAR_MAX_CANDIDATES = 8_192
#: The similar pixels' mean residual is shrunk towards the date's mean by k / (k + SIMILAR_PRIOR).
SIMILAR_PRIOR = 2.0
#: A date showing fewer than this many visible pixels per neighbour asked for keeps the date's mean: the
#: k "most similar" of a handful are most of them, and their mean would escape the date mean's shrinkage
#: (:data:`DATE_FIELD_PRIOR`). On the 6×6 px tuning tile it took the partly painted case from +2.38 to
#: +1.95 dB over linear interpolation; with this floor, +2.38 again (docs/fit.md "Similar pixels").
SIMILAR_MIN_PER_NEIGHBOUR = 4
#: Pixels per block of the search and of the averaging (a brute-force block's distances: this ×
#: candidates floats).
SIMILAR_BLOCK = 4_096
#: First word of the seed of the fixed draws above (the fit's own streams use small integers).
SIMILAR_STREAM = 0x5EED


def _kernel(scale_px: float) -> np.ndarray:
    """The 1-D Gaussian taps scipy's ``gaussian_filter`` uses (radius ``truncate`` × scale, sum 1)."""
    radius = int(DATE_FIELD_TRUNCATE * scale_px + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / scale_px) ** 2)
    return taps / taps.sum()


def blur(planes: np.ndarray, scale_px: float, device: torch.device | None = None) -> np.ndarray:
    """Each (y, x) plane of ``planes`` (n, y, x) convolved with the truncated Gaussian, zeros outside.

    On a CPU, scipy (torch's CPU convolutions are far slower for one-channel planes); on an accelerator,
    the same separable kernel as two torch convolutions there (a 384×768 px, 30-date tile's 330 planes
    take ~5 s of one CPU core with scipy).
    """
    if device is None or device.type == "cpu":
        return ndimage.gaussian_filter(
            planes, (0, scale_px, scale_px), mode="constant", truncate=DATE_FIELD_TRUNCATE
        )
    return _blur_torch(planes, scale_px, device)


def _blur_torch(planes: np.ndarray, scale_px: float, device: torch.device) -> np.ndarray:
    """:func:`blur` as two torch convolutions on ``device`` (any device; used on accelerators)."""
    kernel = torch.as_tensor(_kernel(scale_px), dtype=torch.float32, device=device)
    radius = len(kernel) // 2
    x = torch.as_tensor(planes, dtype=torch.float32).to(device)[:, None]
    x = functional.conv2d(x, kernel.view(1, 1, 1, -1), padding=(0, radius))
    x = functional.conv2d(x, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return x[:, 0].cpu().numpy()


def _centre_weight(scale_px: float) -> float:
    """The 2-D Gaussian kernel's weight at its own centre (what one pixel gives itself)."""
    taps = _kernel(scale_px)
    return float(taps[len(taps) // 2] ** 2)


#: A normal distribution's standard deviation is this × its median absolute deviation.
MAD_TO_SD = 1.4826


def bright_outliers(values: np.ndarray, sample: np.ndarray, sds: float, floor: float) -> np.ndarray:
    """Which ``values`` lie more than ``sds`` robust standard deviations (:data:`MAD_TO_SD` × the median
    absolute deviation of ``sample``, plus ``floor``) above ``sample``'s median: the haze test of the
    field (a date's visible pixels) and of the σ model (``fit.uncertainty.without_hazy_dates``, whole
    held-out dates). Haze brightens blue, so only the bright side counts."""
    centre = float(np.median(sample))
    spread = MAD_TO_SD * float(np.median(np.abs(sample - centre))) + floor
    return np.asarray(values - centre > sds * spread)


def _hazy(residual: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """(y, x): visible pixels whose (blue) residual is a bright outlier of the date's visible ones."""
    return seen & bright_outliers(residual, residual[seen], DATE_FIELD_HAZE_MADS, DATE_FIELD_MAD_FLOOR)


def trajectory_features(guide: np.ndarray, components: int = SIMILAR_COMPONENTS) -> np.ndarray:
    """(y, x, components) float32: each pixel's guide over every date and band, standardised per (date,
    band), projected on the leading principal components (fitted on at most :data:`SIMILAR_FIT_PIXELS`
    pixels). Pixels close in this space follow the same course through the window: the same crop, the
    same land cover."""
    n_dates, n_bands, height, width = guide.shape
    # (date·band, pixel): a view, not a copy; a full tile's is ~0.5 GB in float32.
    columns = np.asarray(guide, dtype=np.float32).reshape(n_dates * n_bands, height * width)
    rng = np.random.default_rng([SIMILAR_STREAM, 0])
    if columns.shape[1] > SIMILAR_FIT_PIXELS:
        sample = columns[:, rng.choice(columns.shape[1], SIMILAR_FIT_PIXELS, replace=False)].T
    else:
        sample = columns.T
    mean, std = sample.mean(axis=0), sample.std(axis=0) + np.float32(1e-6)
    basis = np.linalg.svd((sample - mean) / std, full_matrices=False)[2][:components]  # (c, date·band)
    # ((x − mean) / std) · basis, block by block: no standardised copy of the whole tile.
    out = np.empty((height * width, len(basis)), dtype=np.float32)
    for start in range(0, height * width, SIMILAR_FIT_PIXELS):
        block = columns[:, start : start + SIMILAR_FIT_PIXELS].T
        out[start : start + SIMILAR_FIT_PIXELS] = ((block - mean) / std) @ basis.T
    return out.reshape(height, width, -1)


def similar_mean(
    features: np.ndarray,
    seen: np.ndarray,
    residual: np.ndarray,
    fallback: np.ndarray,
    k: int,
    date: int = 0,
    device: torch.device | None = None,
) -> np.ndarray:
    """(band, y, x): per pixel, the mean ``residual`` of its ``k`` nearest ``seen`` pixels in ``features``
    (itself never among them), shrunk towards ``fallback`` (band, y, x) by k / (k + :data:`SIMILAR_PRIOR`);
    ``fallback`` itself where fewer than :data:`SIMILAR_MIN_PER_NEIGHBOUR` × k pixels are ``seen``.

    ``features`` (y, x, c); ``seen`` (y, x); ``residual`` (band, y, x), used on ``seen`` pixels only.
    Candidates beyond :data:`SIMILAR_MAX_CANDIDATES` are a fixed draw (seeded by ``date``).
    """
    height, width = seen.shape
    candidates = np.flatnonzero(seen.ravel())
    if candidates.size < max(2, SIMILAR_MIN_PER_NEIGHBOUR * k):
        return fallback
    if candidates.size > SIMILAR_MAX_CANDIDATES:
        rng = np.random.default_rng([SIMILAR_STREAM, 1, date])
        candidates = np.sort(rng.choice(candidates, SIMILAR_MAX_CANDIDATES, replace=False))
    take = min(k + 1, candidates.size)  # one more: a candidate's own sample is dropped below
    points = features.reshape(-1, features.shape[-1])
    nearest = _nearest(points, points[candidates], take, device)  # (pixel, take) indices into candidates
    # Where each pixel sits among the candidates (−1: not one): its own sample is left out.
    own = np.full(height * width, -1)
    own[candidates] = np.arange(candidates.size)
    weight = (nearest != own[:, None]).astype(np.float32)
    # Without its own sample among them, a pixel drops the farthest instead: k neighbours for every one.
    weight[weight.sum(axis=1) == take, -1] = 0.0
    values = residual.reshape(len(residual), -1)[:, candidates].T  # (candidate, band)
    total = np.empty((height * width, len(residual)), dtype=np.float32)
    for start in range(0, height * width, SIMILAR_BLOCK):
        block = slice(start, start + SIMILAR_BLOCK)
        total[block] = np.einsum("nk,nkb->nb", weight[block], values[nearest[block]])
    count = weight.sum(axis=1)
    total_map = total.T.reshape(residual.shape)
    count_map = count.reshape(1, height, width)
    return ((total_map + SIMILAR_PRIOR * fallback) / (count_map + SIMILAR_PRIOR)).astype(np.float32)


def _nearest(points: np.ndarray, reference: np.ndarray, take: int, device: torch.device | None) -> np.ndarray:
    """(n, take): indices of each point's ``take`` nearest ``reference`` rows (Euclidean), nearest first.

    On a CPU, a k-d tree (scipy; on a full tile's 8 components far faster than brute force there:
    ``bench/fit.py --sections field``); on an accelerator, brute force (:func:`_nearest_brute`). Both are
    exact, so they agree up to ties.
    """
    if device is None or device.type == "cpu":
        found = cKDTree(reference).query(points, k=take, workers=torch.get_num_threads())[1]
        return np.asarray(found).reshape(len(points), take)
    return _nearest_brute(points, reference, take, device)


def _nearest_brute(points: np.ndarray, reference: np.ndarray, take: int, device: torch.device) -> np.ndarray:
    """:func:`_nearest` by brute force on ``device``, in blocks of :data:`SIMILAR_BLOCK` points."""
    reference_on = torch.as_tensor(reference, device=device)
    out = np.empty((len(points), take), dtype=np.int64)
    for start in range(0, len(points), SIMILAR_BLOCK):
        block = torch.as_tensor(points[start : start + SIMILAR_BLOCK], device=device)
        found = torch.cdist(block, reference_on).topk(take, largest=False, sorted=True).indices
        out[start : start + SIMILAR_BLOCK] = found.cpu().numpy()
    return out


def date_residual_field(
    reflectance: np.ndarray,
    guide: np.ndarray,
    visible: np.ndarray,
    *,
    scale_px: float = DATE_FIELD_PX,
    blue: int | None = None,
    device: torch.device | None = None,
    similar: int = 0,
    components: int = SIMILAR_COMPONENTS,
) -> np.ndarray:
    """(time, band, y, x): each date's guide error interpolated from its other visible pixels.

    ``reflectance``, ``guide``: (time, band, y, x); ``visible`` (time, y, x): the samples whose
    observation may be used. Add the result (or a fraction of it) to ``guide``. ``blue``: the index of
    the blue band (B02), whose bright outliers are left out (:data:`DATE_FIELD_HAZE_MADS`); None: none
    are. ``device``: where to convolve and search (None or a CPU: scipy for the convolution).
    ``similar``: where few visible pixels are near, take the mean residual of this many most similar
    visible pixels of the date (:func:`similar_mean`) instead of the date's mean alone (0: the mean),
    compared on ``components`` principal components of the guide's trajectories.
    """
    field = np.zeros(guide.shape, dtype=np.float32)
    centre = _centre_weight(scale_px)
    features = trajectory_features(guide, components) if similar else None
    for date in np.flatnonzero(visible.any(axis=(1, 2))):
        seen = visible[date]
        if blue is not None:
            seen = seen & ~_hazy(reflectance[date, blue] - guide[date, blue], seen)
            if not seen.any():
                continue
        count = float(seen.sum())
        weight = seen.astype(np.float32)
        residual = np.where(seen[None], reflectance[date] - guide[date], 0.0).astype(np.float32)
        smooth = blur(np.concatenate([weight[None], residual]), scale_px, device)
        # Leave each pixel's own sample out: the kernel's centre weight, its own term of the mean.
        support = np.clip(smooth[0] - centre * weight, 0.0, None)
        local = (smooth[1:] - centre * residual) / np.maximum(support, 1e-12)
        blend = support / (support + DATE_FIELD_SUPPORT)
        mean = (residual.sum(axis=(1, 2), keepdims=True) - residual) / (count - weight + DATE_FIELD_PRIOR)
        if features is not None:
            mean = similar_mean(features, seen, residual, mean, similar, int(date), device)
        field[date] = np.where(support > 0, blend * local, 0.0) + (1.0 - blend) * mean
    return field
