"""MARCS model atmospheres: read ``.mod`` files, pack a grid, give an atmosphere for any prior point.

Which models: from the MARCS 2008 "standard" grid (Gustafsson et al. 2008) we use plane-parallel
models with v_turb = 1 km/s for log g >= 3 and spherical 1 M_sun models with v_turb = 2 km/s for
log g < 3 (the MARCS conventions for dwarfs and giants). All share the 56-point lg tau_Ross scale
from -5 to +2, so models are interpolated point by point **on the Rosseland optical-depth scale**:
T and lg tau_5000 linearly, Pe, Pg, rho, rhox and kappa_Ross in log, the radius in log.

How an atmosphere is made (``AtmosphereGrid.atmosphere``), recorded per spectrum as ``method``:

``interpolated``
    [M/H] lies between two metallicity slices <= 1 dex apart that both bracket (T_eff, log g)
    with all four corners present: trilinear interpolation.
``interpolated_wide``
    Same, but the two slices are > 1 dex apart (the public grid has nothing between
    [M/H] = -2 and 0): the linear interpolation spans the gap.
``metallicity_transfer``
    Only one side of [M/H] is covered at this (T_eff, log g) (the public grid has no models
    cooler than 5000 K or hotter than 6500 K at [M/H] > -2). We take the structure of the
    nearest covered slice at the requested (T_eff, log g) and add the metallicity response of
    the structure, q([M/H]) - q([M/H]_edge), measured at the nearest T_eff where the grid does
    bracket the requested [M/H] (for T: the ratio instead of the difference). It is continuous
    with ``interpolated``/``interpolated_wide`` at the coverage edge and linear in [M/H] across
    the gap, so flux changes smoothly along [M/H] (checked in the tests).

The [alpha/Fe] = +0.4 of the metal-poor models and 0 of the metal-rich ones is inherited; the
spectrum's own [X/Fe] enter the line opacity only (as in most grid-based pipelines).

Reading a folder or tar archive of models takes memory bounded by design, not by the archive: a ``.mod`` file
larger than :data:`MAX_MOD_BYTES` (a MARCS model is about 24 kB) is refused from its declared size, and at most
that many bytes plus one are ever read of it; more than :data:`MAX_MODELS` ``.mod`` files or
:data:`MAX_TAR_MEMBERS` archive members are refused (a few kB each are kept).
"""

from __future__ import annotations

import io
import re
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "Atmosphere",
    "AtmosphereCoverageError",
    "AtmosphereGrid",
    "MarcsModel",
    "default_grid",
    "parse_marcs",
    "read_marcs",
]

# Quantities carried per depth point: (name, interpolate in log?)
QUANTITIES: tuple[tuple[str, bool], ...] = (
    ("T", False),
    ("lgtau5", False),
    ("Pe", True),
    ("Pg", True),
    ("rho", True),
    ("rhox", True),
    ("kappa", True),
)
_Q_INDEX = {name: i for i, (name, _) in enumerate(QUANTITIES)}
_LOG_Q = np.array([is_log for _, is_log in QUANTITIES])
KB_CGS = 1.380649e-16
PLANE_MIN_LOGG = 3.0
DEFAULT_GRID_FILE = "marcs_grid.npz"
#: the largest ``.mod`` file read (a MARCS model is about 24 kB): larger ones are refused, not read
MAX_MOD_BYTES = 2**20
#: the most ``.mod`` files one source may hold (the MARCS 2008 standard library has 2 634)
MAX_MODELS = 100_000
#: the most members (files, folders, ...) a tar archive of models may hold
MAX_TAR_MEMBERS = 1_000_000


class AtmosphereCoverageError(ValueError):
    """No atmosphere can be made for the requested parameters from this grid."""


@dataclass
class MarcsModel:
    """One MARCS model as read from a ``.mod`` file (cgs units, 56 depth points)."""

    name: str
    teff: float
    logg: float
    monh: float
    alpha: float
    vturb: float
    mass: float
    radius: float
    geometry: str  # "plane" or "sphere"
    lgtaur: np.ndarray
    data: np.ndarray  # (ndepth, len(QUANTITIES)), linear units
    abund: np.ndarray = field(repr=False)  # log eps, H = 12, 92 elements


def _fail(source: str, what: str) -> None:
    raise ValueError(f"{source}: not a readable MARCS .mod file ({what})")


def read_marcs(path_or_text: str | Path, source: str | None = None) -> MarcsModel:
    """Parse a MARCS ``.mod`` file (path, or the text itself with ``source`` naming it)."""
    if isinstance(path_or_text, Path) or (isinstance(path_or_text, str) and "\n" not in path_or_text):
        source = source or str(path_or_text)
        text = _read_model_file(Path(path_or_text))
    else:
        text, source = path_or_text, source or "<text>"
    return parse_marcs(text, source)


def parse_marcs(text: str, source: str) -> MarcsModel:
    """Parse the text of a MARCS ``.mod`` file; ``source`` names it in errors."""
    lines = text.splitlines()
    if len(lines) < 30:
        _fail(source, f"only {len(lines)} lines")

    def header_number(index: int, key: str) -> float:
        m = re.match(r"\s*([-+0-9.Ee]+)", lines[index])
        if not m or key.lower() not in lines[index].lower():
            _fail(source, f"line {index + 1} should hold '{key}', found {lines[index].strip()!r}")
        return float(m.group(1))

    teff = header_number(1, "Teff")
    grav = header_number(3, "gravity")
    vturb = header_number(4, "Microturbulence")
    mass = header_number(5, "mass")
    m = re.match(r"\s*([-+0-9.]+)\s+([-+0-9.]+)\s+Metallicity", lines[6])
    if not m:
        _fail(source, "line 7 should hold '[Fe/H] [alpha/Fe] Metallicity'")
    monh, alpha = float(m.group(1)), float(m.group(2))
    radius = header_number(7, "radius")
    try:
        i_ab = next(i for i, line in enumerate(lines) if "chemical number abundances" in line)
        i_nd = next(i for i, line in enumerate(lines) if "Number of depth points" in line)
    except StopIteration:
        _fail(source, "missing abundance or depth-point header")
    abund = np.array(" ".join(lines[i_ab + 1 : i_nd]).split(), dtype=float)
    ndepth = int(lines[i_nd].split()[0])
    i1 = i_nd + 3  # "Model structure", column header, then rows
    try:
        block1 = np.array([lines[i1 + k].split() for k in range(ndepth)], dtype=float)
        block2 = np.array([lines[i1 + ndepth + 1 + k].split() for k in range(ndepth)], dtype=float)
    except (ValueError, IndexError):
        _fail(source, f"structure table of {ndepth} depth points is truncated or not numeric")
    if block1.shape[1] != 9 or block2.shape[1] != 8:
        _fail(source, "structure tables do not have the 9 + 8 MARCS columns")
    # block1: k lgTauR lgTau5 Depth T Pe Pg Prad Pturb ; block2: k lgTauR KappaRoss Density Mu Vconv Fconv/F RHOX
    # -> T, lgTau5, Pe, Pg (block 1); Density, RHOX, KappaRoss (block 2): the order of QUANTITIES
    data = np.column_stack([block1[:, 4], block1[:, 2], block1[:, 5], block1[:, 6],
                            block2[:, 3], block2[:, 7], block2[:, 2]])
    if not np.all(np.isfinite(data)) or np.any(data[:, [0, 2, 3, 4, 5, 6]] <= 0):
        _fail(source, "non-positive or non-finite temperature/pressure/density")
    return MarcsModel(
        name=lines[0].strip(),
        teff=teff,
        logg=float(np.log10(grav)),
        monh=monh,
        alpha=alpha,
        vturb=vturb,
        mass=mass,
        radius=radius,
        geometry="plane" if abs(radius - 1.0) < 0.1 else "sphere",
        lgtaur=block1[:, 1],
        data=data,
        abund=abund,
    )


@dataclass
class Atmosphere:
    """A model atmosphere at one (T_eff, log g, [M/H]) plus how it was obtained."""

    teff: float
    logg: float
    monh: float
    geometry: str
    radius: float  # cm; 1 for plane-parallel
    lgtaur: np.ndarray
    data: np.ndarray  # (ndepth, len(QUANTITIES)), linear units
    method: str
    sources: str  # which grid models went in (for provenance / debugging)

    def quantity(self, name: str) -> np.ndarray:
        return self.data[:, _Q_INDEX[name]]

    def height(self) -> np.ndarray:
        """Geometric depth (cm, positive outwards, 0 at tau_Ross = 1) from d rhox = -rho dh."""
        rhox, rho = self.quantity("rhox"), self.quantity("rho")
        dh = -np.diff(rhox) / (0.5 * (rho[1:] + rho[:-1]))
        h = np.concatenate([[0.0], np.cumsum(dh)])
        return h - np.interp(0.0, self.lgtaur, h)

    def to_pysme(self):
        """Build a PySME embedded atmosphere (imported lazily: PySME is an optional extra)."""
        from pysme.atmosphere.atmosphere import Atmosphere as SmeAtmosphere

        T, Pe, Pg = self.quantity("T"), self.quantity("Pe"), self.quantity("Pg")
        atmo = SmeAtmosphere(
            teff=self.teff,
            logg=self.logg,
            monh=self.monh,
            vturb=1.0,
            method="embedded",
            source=f"MARCS 2008 ({self.method})",
            geom="PP" if self.geometry == "plane" else "SPH",
            depth="TAU" if self.geometry == "plane" else "RHOX",
            interp="TAU",
            wlstd=5000.0,
        )
        atmo.opflag = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0]  # MARCS standard
        atmo.temp = T
        atmo.xne = Pe / T / KB_CGS
        atmo.xna = (Pg - Pe) / T / KB_CGS
        atmo.rho = self.quantity("rho")
        atmo.tau = 10.0 ** self.quantity("lgtau5")
        atmo.rhox = self.quantity("rhox")
        if self.geometry == "sphere":
            atmo.radius = self.radius
            atmo.height = self.height()
        return atmo


class AtmosphereGrid:
    """A set of MARCS models with interpolation on the optical-depth scale.

    Build one with :meth:`from_models`, :meth:`from_path` (a folder or ``.tar.gz`` of ``.mod``
    files, or a packed ``.npz``) or :func:`default_grid` (the grid shipped in the package).
    """

    def __init__(self, params: np.ndarray, geometry: np.ndarray, radius: np.ndarray, lgtaur: np.ndarray,
                 data: np.ndarray, names: np.ndarray, source: str):
        self.params = np.asarray(params, dtype=float)  # (M, 3): teff, logg, monh
        self.geometry = np.asarray(geometry).astype(str)
        self.radius = np.asarray(radius, dtype=float)
        self.lgtaur = np.asarray(lgtaur, dtype=float)
        self.data = np.asarray(data, dtype=float)  # (M, ndepth, Q)
        self.names = np.asarray(names).astype(str)
        self.source = source
        self._index = {
            (g, round(t, 3), round(lg, 3), round(mh, 3)): i
            for i, (g, (t, lg, mh)) in enumerate(zip(self.geometry, self.params, strict=True))
        }
        # Each metallicity slice has its own T_eff / log g axes (the metal-rich grid is narrower).
        self._monh_axis: dict[str, np.ndarray] = {}
        self._slice_axes: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}
        for g in ("plane", "sphere"):
            sel = self.geometry == g
            self._monh_axis[g] = np.unique(self.params[sel, 2])
            for m in self._monh_axis[g]:
                in_slice = sel & (self.params[:, 2] == m)
                self._slice_axes[(g, float(m))] = (np.unique(self.params[in_slice, 0]),
                                                   np.unique(self.params[in_slice, 1]))

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_models(cls, models: Iterable[MarcsModel], source: str) -> AtmosphereGrid:
        chosen = [m for m in models if _is_standard_choice(m)]
        if not chosen:
            raise AtmosphereCoverageError(
                f"{source}: no standard MARCS models (plane v_turb 1, sphere 1 Msun v_turb 2)")
        lgtaur = chosen[0].lgtaur
        data = []
        for m in chosen:
            if m.lgtaur.shape == lgtaur.shape and np.allclose(m.lgtaur, lgtaur):
                data.append(m.data)
            else:  # put it on the common tau_Ross scale
                logd = _to_log(m.data)
                res = np.column_stack([np.interp(lgtaur, m.lgtaur, logd[:, q]) for q in range(logd.shape[1])])
                data.append(_from_log(res))
        return cls(
            params=[(m.teff, round(m.logg, 2), m.monh) for m in chosen],
            geometry=[m.geometry for m in chosen],
            radius=[m.radius for m in chosen],
            lgtaur=lgtaur,
            data=np.stack(data),
            names=[m.name for m in chosen],
            source=source,
        )

    @classmethod
    def from_path(cls, path: str | Path) -> AtmosphereGrid:
        """Load MARCS models from a folder of ``.mod`` files, a ``.tar.gz`` of them, or a packed ``.npz``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"atmosphere source {path} does not exist: give a folder or .tar.gz of MARCS .mod files, "
                "or a grid packed with `spectra atmospheres pack`"
            )
        if path.suffix == ".npz":
            return cls.load(path)
        if path.is_dir():
            files = sorted(path.rglob("*.mod"))
            if not files:
                raise FileNotFoundError(f"atmosphere folder {path} holds no MARCS .mod files")
            _check_model_count(len(files), str(path))
            models = (read_marcs(f) for f in files)
        elif path.name.endswith((".tar.gz", ".tgz", ".tar")):
            models = _models_from_tar(path)
        else:
            raise ValueError(f"{path}: expected a folder, a .tar.gz of MARCS .mod files or a packed .npz grid")
        return cls.from_models(models, source=str(path))

    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            path,
            params=self.params,
            geometry=self.geometry,
            radius=self.radius,
            lgtaur=self.lgtaur,
            data=self.data.astype(np.float32),
            names=self.names,
            source=np.array(self.source),
        )

    @classmethod
    def load(cls, path: str | Path) -> AtmosphereGrid:
        try:
            with np.load(path) as z:
                return cls(z["params"], z["geometry"], z["radius"], z["lgtaur"], z["data"].astype(float),
                           z["names"], str(z["source"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a packed atmosphere grid ({exc})") from None

    def __len__(self) -> int:
        return len(self.params)

    def subset(self, keep: np.ndarray) -> AtmosphereGrid:
        """A grid of only the models where ``keep`` is true (e.g. for leave-one-out tests)."""
        keep = np.asarray(keep, dtype=bool)
        return AtmosphereGrid(self.params[keep], self.geometry[keep], self.radius[keep], self.lgtaur,
                              self.data[keep], self.names[keep], f"{self.source} (subset of {keep.sum()})")

    # ---------------------------------------------------------------------------- interpolation
    def geometry_for(self, logg: float) -> str:
        return "plane" if logg >= PLANE_MIN_LOGG else "sphere"

    def _model(self, geometry: str, teff: float, logg: float, monh: float) -> int | None:
        return self._index.get((geometry, round(teff, 3), round(logg, 3), round(monh, 3)))

    def _slice_corners(self, geometry: str, teff: float, logg: float, monh: float):
        """Bilinear corners (index, weight) within one metallicity slice, or None if not covered."""
        teffs, loggs = self._slice_axes[(geometry, float(monh))]
        tb, gb = _bracket(teffs, teff), _bracket(loggs, logg)
        if tb is None or gb is None:
            return None
        corners = []
        for t, wt in tb:
            for g, wg in gb:
                idx = self._model(geometry, t, g, monh)
                if idx is None:
                    return None
                corners.append((idx, wt * wg))
        return corners

    def _covered_monh(self, geometry: str, teff: float, logg: float) -> list[float]:
        return [float(m) for m in self._monh_axis[geometry]
                if self._slice_corners(geometry, teff, logg, m) is not None]

    def _blend(self, weighted: list[tuple[int, float]]) -> tuple[np.ndarray, float]:
        """Weighted mean of models' log-quantities; returns (log-space data, log radius)."""
        logd = np.zeros(self.data.shape[1:])
        logr = 0.0
        for idx, w in weighted:
            logd += w * _to_log(self.data[idx])
            logr += w * np.log(self.radius[idx])
        return logd, logr

    def _interp_bracketed(self, geometry, teff, logg, monh, covered):
        """Trilinear interpolation where [M/H] is bracketed by covered slices; else None."""
        mb = _bracket(np.array(covered), monh) if covered else None
        if mb is None:
            return None
        weighted = []
        for m, wm in mb:
            weighted += [(i, w * wm) for i, w in self._slice_corners(geometry, teff, logg, m)]
        span = mb[-1][0] - mb[0][0]
        return self._blend(weighted), span, weighted

    def atmosphere(self, teff: float, logg: float, monh: float) -> Atmosphere:
        """The model atmosphere at (T_eff, log g, [M/H]); see the module docstring for the method."""
        geometry = self.geometry_for(logg)
        covered = self._covered_monh(geometry, teff, logg)
        if not covered:
            raise AtmosphereCoverageError(
                f"no {geometry} MARCS models bracket T_eff = {teff:g} K, log g = {logg:g} at any metallicity "
                f"in {self.source}"
            )
        found = self._interp_bracketed(geometry, teff, logg, monh, covered)
        if found is not None:
            (logd, logr), span, weighted = found
            method = "interpolated" if span <= 1.0 + 1e-9 else "interpolated_wide"
        else:
            logd, logr, weighted = self._metallicity_transfer(geometry, teff, logg, monh, covered)
            method = "metallicity_transfer"
        data = _from_log(logd)
        sources = ";".join(f"{self.names[i]}*{w:.3f}" for i, w in weighted if abs(w) > 1e-9)
        return Atmosphere(teff, logg, monh, geometry, float(np.exp(logr)), self.lgtaur.copy(), data, method, sources)

    def _metallicity_transfer(self, geometry, teff, logg, monh, covered):
        edge = min(covered, key=lambda m: abs(m - monh))
        (edge_logd, edge_logr), _, w_edge = self._interp_bracketed(geometry, teff, logg, edge, covered)
        teffs = np.unique(self.params[self.geometry == geometry, 0])
        for t_ref in sorted(teffs, key=lambda t: abs(t - teff)):
            cov_ref = self._covered_monh(geometry, t_ref, logg)
            at = self._interp_bracketed(geometry, t_ref, logg, monh, cov_ref)
            at_edge = self._interp_bracketed(geometry, t_ref, logg, edge, cov_ref)
            if at is None or at_edge is None:
                continue
            (ref_logd, ref_logr), _, w_ref = at
            (ref_edge_logd, ref_edge_logr), _, w_ref_edge = at_edge
            delta = ref_logd - ref_edge_logd
            # Temperature responds in proportion (T ratio), the other linear quantity (lg tau5) additively.
            t = _Q_INDEX["T"]
            delta[:, t] = edge_logd[:, t] * (ref_logd[:, t] / ref_edge_logd[:, t] - 1.0)
            weighted = w_edge + [(i, w) for i, w in w_ref] + [(i, -w) for i, w in w_ref_edge]
            return edge_logd + delta, edge_logr + (ref_logr - ref_edge_logr), weighted
        raise AtmosphereCoverageError(
            f"no T_eff column of the {geometry} grid brackets [M/H] = {monh:g} at log g = {logg:g}; "
            f"cannot approximate the atmosphere at T_eff = {teff:g} K"
        )


def _to_log(data: np.ndarray) -> np.ndarray:
    out = np.array(data, dtype=float, copy=True)
    out[..., _LOG_Q] = np.log(out[..., _LOG_Q])
    return out


def _from_log(logd: np.ndarray) -> np.ndarray:
    out = np.array(logd, dtype=float, copy=True)
    out[..., _LOG_Q] = np.exp(out[..., _LOG_Q])
    return out


def _bracket(axis: np.ndarray, value: float):
    """[(grid value, weight)] for linear interpolation on a sorted axis, or None outside it."""
    if value < axis[0] - 1e-9 or value > axis[-1] + 1e-9:
        return None
    j = int(np.searchsorted(axis, value))
    if j < axis.size and abs(axis[j] - value) < 1e-9:
        return [(float(axis[j]), 1.0)]
    lo, hi = float(axis[j - 1]), float(axis[j])
    w = (value - lo) / (hi - lo)
    return [(lo, 1.0 - w), (hi, w)]


def _is_standard_choice(m: MarcsModel) -> bool:
    if m.geometry == "plane":
        return abs(m.vturb - 1.0) < 1e-6
    return abs(m.vturb - 2.0) < 1e-6 and abs(m.mass - 1.0) < 1e-6


def _check_model_size(size: int, source: str) -> None:
    if size > MAX_MOD_BYTES:
        raise ValueError(f"{source}: {size} bytes, more than the {MAX_MOD_BYTES} bytes of the largest MARCS .mod "
                         "file read (spectra.synth.atmospheres.MAX_MOD_BYTES); not a MARCS model")


def _check_model_count(count: int, source: str) -> None:
    if count > MAX_MODELS:
        raise ValueError(f"{source}: more than {MAX_MODELS} .mod files (spectra.synth.atmospheres.MAX_MODELS); "
                         "give the MARCS standard models only")


def _read_limited(fh, source: str) -> str:
    """At most :data:`MAX_MOD_BYTES` + 1 bytes of an open model file, refused if there are more."""
    data = fh.read(MAX_MOD_BYTES + 1)
    _check_model_size(len(data), source)
    return data.decode("ascii", errors="replace")


def _read_model_file(path: Path) -> str:
    """The text of a ``.mod`` file of a folder, its size checked before it is read."""
    try:
        _check_model_size(path.stat().st_size, str(path))
        with open(path, "rb") as fh:
            return _read_limited(fh, str(path))
    except OSError as exc:
        raise FileNotFoundError(f"cannot read MARCS model {path}: {exc.strerror}") from None


def _models_from_tar(path: Path):
    """The models of a tar archive, streamed member by member: each ``.mod`` member's declared size is checked
    before it is read and at most ``MAX_MOD_BYTES + 1`` bytes of it are read; the member list is not kept."""
    with _open_tar(path) as tar:
        members = models = 0
        while (member := _next_member(tar, path)) is not None:
            members += 1
            if members > MAX_TAR_MEMBERS:
                raise ValueError(f"{path}: more than {MAX_TAR_MEMBERS} archive members "
                                 "(spectra.synth.atmospheres.MAX_TAR_MEMBERS); not a MARCS model archive")
            tar.members.clear()  # tarfile keeps every header it has read; we need none of them again
            if not (member.isfile() and member.name.endswith(".mod")):
                continue
            models += 1
            _check_model_count(models, str(path))
            source = f"{path}:{member.name}"
            _check_model_size(member.size, source)
            yield parse_marcs(_read_member(tar, member, path), source=source)


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path)
    except _TAR_ERRORS as exc:
        raise ValueError(f"{path}: not a readable tar archive ({exc})") from None


def _next_member(tar: tarfile.TarFile, path: Path) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except _TAR_ERRORS as exc:
        raise ValueError(f"{path}: damaged tar archive ({exc})") from None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> str:
    source = f"{path}:{member.name}"
    try:
        return _read_limited(tar.extractfile(member), source)
    except _TAR_ERRORS as exc:
        raise ValueError(f"{source}: damaged tar archive ({exc})") from None


_DEFAULT: dict[str, AtmosphereGrid] = {}


def default_grid() -> AtmosphereGrid:
    """The packed MARCS grid shipped inside the package (built by ``spectra atmospheres pack``)."""
    if "grid" not in _DEFAULT:
        ref = resources.files("spectra") / "data" / DEFAULT_GRID_FILE
        with resources.as_file(ref) as p:
            if not Path(p).exists():
                raise FileNotFoundError(
                    f"the packaged atmosphere grid {p} is missing; rebuild it with "
                    "`spectra atmospheres pack --source MARCS.tar.gz`"
                )
            _DEFAULT["grid"] = AtmosphereGrid.load(io.BytesIO(Path(p).read_bytes()))
    return _DEFAULT["grid"]
