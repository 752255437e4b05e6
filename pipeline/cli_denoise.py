"""``specdenoise denoise``: run a trained denoiser on a dataset or on spectrum files (the stage
is :mod:`specdenoise.stage_denoise`)."""

from __future__ import annotations

import argparse

from specdenoise import options
from specdenoise.errors import SpecdenoiseError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "denoise",
        help="denoise a dataset or a FITS/CSV spectrum with a trained model",
        description=(
            "Denoise every spectrum of a dataset into a new Zarr store (flux_denoised plus the "
            "input's coordinates), or the spectra of a PFS pfsArm/pfsMerged/pfsObject file or a "
            "FITS/CSV spectrum file into FITS (--out X.fits) or CSV."
        ),
    )
    options.add_run(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="IN.zarr", help="dataset to denoise")
    src.add_argument("--spectrum", metavar="FILE",
                     help="a PFS pfsArm (medium-resolution red arm 'm'), pfsMerged or "
                          "pfsObject file (masked pixels are not trusted and stay masked; "
                          "another wavelength grid covering the model's is resampled flux-"
                          "conservingly and the result mapped back), or a spectrum file on "
                          "the model's pixel grid (4096 PFS red-arm MR pixels; wavelengths, "
                          "when given, in nm, vacuum, within half a pixel of the grid; a FITS "
                          "image's 1-D WCS or a table column's unit is read). FITS (.fits, "
                          ".fit, .fts, .fits.gz): the first HDU with data, either a table with a "
                          "'flux' column (one pixel per row, or one "
                          "spectrum per row as a vector) and optionally a 'wave', 'wavelength' "
                          "or 'lambda' column and a noise column ('sigma'/'error'/'err', "
                          "'ivar' or 'variance'), or a 1-D (one spectrum) or 2-D (one per row) "
                          "image of fluxes. Text/CSV (any other name): comma- or space-"
                          "separated, '#' lines ignored, either a header naming 'flux' (and "
                          "optionally 'wave'/'wavelength' and a noise column) or bare numbers: "
                          "one column = flux, two = wave, flux, three = wave, flux, sigma. Any "
                          "flux unit. Models trained with sigma as an input (the 'best' "
                          "preset, 'run --preset quick') need the noise column")
    p.add_argument("--out", required=True,
                   help="OUT.zarr (with --data: flux_denoised, sigma_denoised, chi2_red, "
                        "chi2_peak, sky_excess, suspect); with --spectrum, OUT.fits writes FITS "
                        "(a PFS input keeps its product's layout and identifiers, COVAR = "
                        "sigma_denoised**2; a plain spectrum an image or table; either gains a "
                        "DENOISE_CHECK table of chi2_red, chi2_peak, sky_excess, suspect per "
                        "spectrum) and any other name CSV (columns wave, flux, flux_denoised, "
                        "sigma_denoised, chi2_red, chi2_peak, sky_excess, suspect, and a "
                        "leading 'spectrum' column for several spectra)")
    p.add_argument("--fiber-id", type=int, nargs="+", action="extend", metavar="N",
                   help="with a pfsArm or pfsMerged --spectrum: denoise only these fibers "
                        "(default: every fiber)")
    p.add_argument("--uncertainty", default="auto",
                   choices=("auto", "head", "sample", "both", "none"),
                   help="how sigma_denoised is estimated: auto (default: the method the run was "
                        "calibrated for, else 'head' for a network trained with uncertainty "
                        "'nll', else 'sample'), head (the network's own), sample (re-noise "
                        "the denoised spectrum K times, the spread of the outputs; any "
                        "network, K+1 passes), both, or none (flux_denoised only: the "
                        "network's own output, without the calibration's input guard)")
    p.add_argument("--samples", type=int, default=None, metavar="K",
                   help="draws for --uncertainty sample/both (default: the calibration's, "
                        "else 8)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="spectra per forward pass (default 256; smaller needs less memory)")
    options.add_device(p)
    options.add_overwrite(p, "an existing OUT.zarr (a denoised store only) or OUT.csv")
    options.add_no_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from specdenoise.stage_denoise import denoise

    run_dir = options.run_dir(args)
    if args.batch_size < 1:
        raise SpecdenoiseError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.samples is not None and args.samples < 2:
        raise SpecdenoiseError(f"--samples must be at least 2, got {args.samples}")
    options.check_device(args.device)
    out = denoise(run_dir, args.out, data=args.data, spectrum=args.spectrum,
                  fiber_ids=args.fiber_id, uncertainty=args.uncertainty, samples=args.samples,
                  batch_size=args.batch_size, device=args.device, overwrite=args.overwrite,
                  progress=not args.no_progress)
    print(f"wrote {out}")
    return 0
