"""Mean |R| of a trained model on the simulated PFS sample products against their truth, next to
the same spectra denoised from a Zarr store made from the same arrays.

    python benchmarks/pfs_samples.py --model RUN [--samples ../shared/data/pfs_datamodel]
        [--work DIR]

Every fiber of the pfsArm and pfsMerged files and each pfsObject file is denoised through the
command line into FITS (``specdenoise denoise --spectrum FILE --out FILE.fits``) and read back
with astropy as the sample set's README does; the store path is ``specdenoise denoise --data``
on a dataset store written from ``truth.npz``'s ``flux``, ``flux_clean``, ``sigma`` and
``mask_store``. |R| = |D - F| / F with F the noiseless truth (``flux_clean``, scaled to nJy for
the pfsObject files), averaged over pixels and spectra.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    from astropy.io import fits

    from specdenoise import cli, schema
    from specdenoise.train import infer

    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--samples", type=Path, default=here.parent / "shared" / "data" /
                   "pfs_datamodel")
    p.add_argument("--work", type=Path, default=None, help="folder for the outputs (temporary)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pfs_samples_"))
    work.mkdir(parents=True, exist_ok=True)
    truth = np.load(args.samples / "truth.npz")
    n = truth["flux"].shape[0]
    clean = truth["flux_clean"].astype(np.float64)

    store = work / "truth.zarr"
    if not store.exists():
        schema.create_dataset_store(store, n, n, truth["wave"], attrs={"config_hash": "sample"})
        schema.write_chunk(store, 0, n, {"flux": truth["flux"], "flux_clean": truth["flux_clean"],
                                         "sigma": truth["sigma"], "mask": truth["mask_store"]})
        schema.finalize_dataset(store)
    den_store = work / "truth_denoised.zarr"
    assert cli.main(["denoise", "--run", args.model, "--data", str(store), "--out",
                     str(den_store), "--overwrite"]) == 0
    import xarray as xr

    from_store = xr.open_zarr(den_store)[infer.DENOISED_VAR].values.astype(np.float64)

    def rel(d, rows):
        return 100 * float(np.mean(np.abs(d / clean[rows] - 1)))

    rows_all = np.arange(n)
    print(f"{'file':<78} {'spectra':>7} {'|R| FITS %':>10} {'|R| store %':>11} "
          f"{'noisy %':>8} {'max rel diff':>12}")
    for name in ("pfsArm-100077-m1.fits", "pfsMerged-100077.fits"):
        out = work / f"denoised-{name}"
        assert cli.main(["denoise", "--run", args.model, "--spectrum",
                         str(args.samples / name), "--out", str(out), "--overwrite"]) == 0
        with fits.open(out) as f:
            fiber = f["FIBERID"].data
            got = np.stack([f["FLUX"].data[int(np.flatnonzero(fiber == fid)[0])]
                            for fid in truth["fiberId"]]).astype(np.float64)
        diff = np.max(np.abs(got - from_store) / np.abs(from_store))
        print(f"{name:<78} {n:>7} {rel(got, rows_all):>10.3f} {rel(from_store, rows_all):>11.3f}"
              f" {rel(truth['flux'].astype(np.float64), rows_all):>8.3f} {diff:>12.2e}")
    objs = [args.samples / str(name) for name in truth["object_file"]]
    got, rows = [], []
    for k, path in enumerate(objs):
        out = work / f"denoised-{path.name}"
        assert cli.main(["denoise", "--run", args.model, "--spectrum", str(path), "--out",
                         str(out), "--overwrite"]) == 0
        row = int(truth["object_index"][k])
        with fits.open(out) as f:
            got.append(f["FLUX"].data.astype(np.float64) / float(truth["scale_nJy"][row]))
        rows.append(row)
    got, rows = np.stack(got), np.array(rows)
    diff = np.max(np.abs(got - from_store[rows]) / np.abs(from_store[rows]))
    label = f"pfsObject-* ({len(objs)} files, flux / scale_nJy)"
    print(f"{label:<78} {len(objs):>7} {rel(got, rows):>10.3f} "
          f"{rel(from_store[rows], rows):>11.3f} "
          f"{rel(truth['flux'][rows].astype(np.float64), rows):>8.3f} {diff:>12.2e}")


if __name__ == "__main__":
    main()
