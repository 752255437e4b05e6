"""``export`` and ``info`` on every store kind, and the attributes a reader can use (issue 20)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy import units as u
from astropy.io import fits
from conftest import make_dataset

from specdenoise import cli, schema
from specdenoise.evaluate.cube import Method, build_cube, open_cube
from specdenoise.evaluate.summary import summarize, write_summary
from specdenoise.train import infer, loop

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory, small_grid):
    """One store of each kind: dataset, denoised store, error cube, summary, grid."""
    d = tmp_path_factory.mktemp("export")
    data = make_dataset(d / "data.zarr", n=10, chunk=4, params=True)
    cfg = loop.make_config(data, None, d / "run", model="unet", preset="quick",
                           model_cfg={"depth": 2, "filters": 4}, epochs=1, batch_size=5,
                           workers=0, device="cpu")
    loop.train(cfg)
    den = infer.denoise_dataset(d / "run", data, d / "den.zarr", device="cpu", progress=False)
    methods = [Method("scaled", "baseline", "0.97 F_hat", lambda f, s, m: 0.97 * f),
               Method("noisy", "baseline", "no denoising", lambda f, s, m: f)]
    cube = build_cube(data, d / "cube.zarr", methods, block=4, progress=False)
    write_summary(summarize(open_cube(cube), {"snr": [0, 20, 40, 100], "*": 2}),
                  d / "summary.zarr", d / "summary.csv")
    # an ETC table from two runs of the ETC's ECSV output
    from test_etc import DARK, _write_ecsv_run

    from specdenoise.simulate.etc_table import import_etc_runs, runs_to_dataset, write_table
    from specdenoise.simulate.noise import BuiltinNoise

    runs = d / "etc_runs"
    runs.mkdir()
    noise = BuiltinNoise()
    for z in (0.0, 40.0):
        _write_ecsv_run(runs / f"z{z:.0f}.ecsv", noise, DARK | {"zenith": z})
    etc = write_table(runs_to_dataset(import_etc_runs([runs])), d / "etc.zarr")
    return {"dataset": data, "denoised": den, "cube": cube, "summary": d / "summary.zarr",
            "grid": small_grid, "etc": etc}


def test_attributes_units_long_names_flags_and_spectrum_ids(stores):
    ds, cube = xr.open_zarr(stores["dataset"]), open_cube(stores["cube"])
    den = xr.open_zarr(stores["denoised"])
    for store in (ds, cube, den):
        for name, var in store.variables.items():
            assert var.attrs.get("long_name"), name
            if "units" in var.attrs:
                u.Unit(var.attrs["units"])  # astropy parses every unit
    assert ds["wave"].attrs["units"] == "nm" and ds["wave"].attrs["medium"] == "vacuum"
    assert ds["flux"].attrs["units"] == "1" and "median" in ds["flux"].attrs["normalisation"]
    assert ds["logg"].attrs["units"] == "dex"
    flags = ds["mask"].attrs
    assert flags["flag_masks"] == list(schema.MASK_BITS.values())
    assert flags["flag_meanings"].split() == list(schema.MASK_BITS)
    # a spectrum id in the dataset, kept by the denoised store and the cube
    np.testing.assert_array_equal(ds["spectrum"].values, np.arange(10))
    np.testing.assert_array_equal(den["spectrum"].values, ds["spectrum"].values)
    np.testing.assert_array_equal(cube["spectrum"].values, ds["spectrum"].values)
    # sorting keeps identity: each id still points at its own spectrum's values
    order = cube.sortby("snr")
    ids = order["spectrum"].values
    assert not np.array_equal(ids, np.arange(10))
    np.testing.assert_array_equal(order["flux"].values, ds["flux"].values[ids])
    # the cube carries the mask
    np.testing.assert_array_equal(cube["mask"].values, ds["mask"].values)
    assert cube["mask"].attrs["flag_meanings"] == flags["flag_meanings"]


@pytest.mark.parametrize("kind", ["dataset", "denoised", "cube", "etc", "grid"])
def test_export_to_hdf5_netcdf_and_fits(stores, kind, tmp_path, capsys):
    pytest.importorskip("h5netcdf", reason="h5netcdf not installed: no HDF5 export")
    src = xr.open_zarr(stores[kind], consolidated=None)
    for suffix in (".h5", ".nc"):
        out = tmp_path / f"{kind}{suffix}"
        assert cli.main(["export", str(stores[kind]), "--to", str(out)]) == 0
        back = xr.open_dataset(out, engine="h5netcdf")
        for name in src.variables:
            a, b = src[name].values, back[name].values
            if a.dtype == object:
                assert list(map(str, a)) == list(map(str, b)), name
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)
            assert back[name].attrs["long_name"], name
        assert back.attrs["specdenoise_kind"] == src.attrs["specdenoise_kind"]
        back.close()
    out = tmp_path / f"{kind}.fits"
    assert cli.main(["export", str(stores[kind]), "--to", str(out)]) == 0
    with fits.open(out) as f:
        assert f[0].header["SDKIND"] == src.attrs["specdenoise_kind"]
        for name in src.variables:
            hdu = f[str(name).upper()]
            assert hdu.header["VARNAME"] == name
            assert tuple(hdu.header["DIMS"].split(",")) == src[name].dims
            if isinstance(hdu, fits.BinTableHDU):
                assert list(hdu.data[name]) == [str(v) for v in src[name].values]
                continue
            np.testing.assert_array_equal(hdu.data, src[name].values, err_msg=name)
            if src[name].attrs.get("units"):  # the store's unit, as written
                assert hdu.header["BUNIT"] == src[name].attrs["units"]
        attrs = dict(zip(f["ATTRS"].data["name"], f["ATTRS"].data["value"], strict=True))
        assert attrs["specdenoise_kind"] == src.attrs["specdenoise_kind"]
    capsys.readouterr()
    # not again without --overwrite; an unknown extension; not a store: one line each
    before = out.read_bytes()
    for args, message in (([str(stores[kind]), "--to", str(out)], "already exists"),
                          ([str(stores[kind]), "--to", str(tmp_path / "x.xyz")], "format"),
                          ([str(tmp_path), "--to", str(tmp_path / "y.nc")], "not a specdenoise")):
        assert cli.main(["export", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert out.read_bytes() == before
    assert not (tmp_path / "x.xyz").exists() and not (tmp_path / "y.nc").exists()


def test_export_summary(stores, tmp_path):
    pytest.importorskip("h5netcdf", reason="h5netcdf not installed: no HDF5 export")
    out = tmp_path / "summary.h5"
    assert cli.main(["export", str(stores["summary"]), "--to", str(out)]) == 0
    tree = xr.open_datatree(out, engine="h5netcdf")
    assert "snr" in tree.children
    assert cli.main(["export", str(stores["summary"]), "--to", str(tmp_path / "s.fits")]) == 0


def test_info_on_every_kind(stores, tmp_path, capsys):
    for kind, expected in (("dataset", ["specdenoise dataset", "spectra: 10; complete (3 of 3",
                                        "710.000-884.957 nm (vacuum)", "S/N (median",
                                        "snr ", "teff "]),
                           ("denoised", ["denoised store", "specdenoise denoise --model",
                                         "spectra: 10", "flux_denoised[spectrum, wave]"]),
                           ("cube", ["error cube", "specdenoise evaluate --data",
                                     "mean |R| by denoiser: scaled", "S/N (median"]),
                           ("summary", ["evaluation summary", "groups:"]),
                           ("grid", ["grid store", "axis teff", "grid nodes present: 24 of 24"]),
                           ("etc", ["ETC table", "axis zenith", "0 .. 40"])):
        assert cli.main(["info", str(stores[kind])]) == 0
        text = capsys.readouterr().out
        for part in expected:
            assert part in text, (kind, part, text)
    # the histogram adds up to the number of spectra
    cli.main(["info", str(stores["dataset"])])
    rows = [ln for ln in capsys.readouterr().out.splitlines() if "#" in ln or ln.strip()
            .split(" ")[0].replace("-", "").replace(".", "").isdigit()]
    assert sum(int(r.split()[-1]) for r in rows) == 10
    assert cli.main(["info", str(tmp_path)]) == 2
    assert "not a specdenoise store" in capsys.readouterr().err
