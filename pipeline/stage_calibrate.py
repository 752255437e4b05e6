"""The calibrate stage: fit a trained run's uncertainty calibration and suspect threshold.

:func:`calibrate` runs the stage (``specdenoise calibrate`` is a thin command line over it): the
network denoises in-domain spectra with known truth, ``sigma_denoised`` is scaled per S/N bin
and the suspect threshold set for a false-alarm rate
(:func:`specdenoise.train.uncertainty.calibrate_run`); the result is written to the run's
``uncertainty.json`` and summarised, one line per S/N bin.
"""

from __future__ import annotations


def calibrate(run_dir, data, *, method: str | None = None, samples: int = 8,
              max_spectra: int | None = 2000, false_alarm: float = 0.01,
              batch_size: int = 256, device=None, log=print):
    """Calibrate the run ``run_dir`` on the dataset ``data`` (or a list of datasets, each S/N
    bin fitted on the first that covers it; ``max_spectra`` None: all of each); logs where it
    was written and, per S/N bin, the coverage and the input-guard choice; returns the
    :class:`~specdenoise.train.uncertainty.Calibration`."""
    from specdenoise.train import uncertainty

    cal = uncertainty.calibrate_run(run_dir, data, method=method, samples=samples,
                                    max_spectra=max_spectra, false_alarm=false_alarm,
                                    batch_size=batch_size, device=device)
    log(f"wrote {uncertainty.calibration_path(run_dir)} ({cal.method}, "
        f"{cal.n_spectra} spectra; suspect above score {cal.threshold:.3g} overall)")
    for row in cal.coverage:
        c = row.get("output", row["calibrated"])
        guard = ""
        if "guard" in row:
            guard = ", input guard " + (f"on, strength {row['guard']:.3g}" if row["guard"]
                                        else "off")
            if "mean_rel_err" in row:
                guard += (f" (mean |R| {row['mean_rel_err']:.3%} without, "
                          f"{row['mean_rel_err_guarded']:.3%} with the best strength)")
        flag = ""
        if row.get("flagged") is not None:
            flag = f", suspect above {row['threshold']:.3g} ({row['flagged']:.1%} flagged)"
        log(f"  S/N {row['snr_lo']:g}-{row['snr_hi'] or 'inf'}: {row['n_spectra']} spectra, "
            f"scale {row['scale']:.3g}, 1-sigma {c['cover1']:.3f}, 2-sigma {c['cover2']:.3f}, "
            f"std z {c['std_z']:.3f}{guard}{flag}")
    return cal
