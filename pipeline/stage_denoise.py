"""The denoise stage: a trained network run on a dataset or on a spectrum file.

:func:`denoise` runs the stage (``specdenoise denoise`` is a thin command line over it). It
chooses the path by what it is given:

- ``data`` (a dataset store) -> a denoised Zarr store (:func:`specdenoise.train.infer.
  denoise_dataset`: ``flux_denoised`` and, unless ``uncertainty="none"``, ``sigma_denoised``,
  ``chi2_red``, ``chi2_peak``, ``sky_excess``, ``suspect``);
- ``spectrum`` that is a PFS product, or any spectrum with a FITS output or ``fiber_ids`` ->
  :func:`specdenoise.stage_spectrum.denoise_spectrum_file` (PFS layouts, WCS wavelengths,
  resampling onto the model's grid and back);
- any other ``spectrum`` (a plain FITS or text spectrum written to CSV) ->
  :func:`specdenoise.train.infer.denoise_file`.
"""

from __future__ import annotations

from pathlib import Path

from specdenoise.errors import SpecdenoiseError


def through_spectrum_stage(spectrum, out, fiber_ids=None) -> bool:
    """Whether a spectrum file goes through :mod:`specdenoise.stage_spectrum`: FITS output,
    chosen fibers, or a PFS product; a plain spectrum to CSV stays with ``infer.denoise_file``."""
    from specdenoise.pfsio import is_pfs_file
    from specdenoise.stage_spectrum import is_fits

    return bool(fiber_ids) or is_fits(out) or (is_fits(spectrum) and is_pfs_file(spectrum))


def denoise(run_dir, out, *, data=None, spectrum=None, fiber_ids=None, uncertainty="auto",
            samples: int | None = None, batch_size: int = 256, device=None,
            overwrite: bool = False, progress: bool | None = None) -> Path:
    """Denoise ``data`` (a dataset store) or ``spectrum`` (a file) with the network of
    ``run_dir`` (a training run or its ``checkpoint.pt``) into ``out``; returns ``out``.

    ``batch_size``: spectra per forward pass (dataset only); ``samples``: draws of the
    ``sample``/``both`` uncertainty (None: the calibration's, else 8); ``progress``: the
    dataset's progress bar.
    """
    if (data is None) == (spectrum is None):
        raise SpecdenoiseError("give one of data (a dataset store) or spectrum (a file)")
    from specdenoise.train import infer

    if data is not None:
        return infer.denoise_dataset(run_dir, data, out, batch_size=batch_size, device=device,
                                     overwrite=overwrite, progress=progress,
                                     uncertainty=uncertainty, samples=samples)
    if through_spectrum_stage(spectrum, out, fiber_ids):
        from specdenoise.stage_spectrum import denoise_spectrum_file

        return denoise_spectrum_file(run_dir, spectrum, out, device=device,
                                     overwrite=overwrite, fiber_ids=fiber_ids,
                                     uncertainty=uncertainty, samples=samples)
    return infer.denoise_file(run_dir, spectrum, out, device=device, overwrite=overwrite,
                              uncertainty=uncertainty, samples=samples)
