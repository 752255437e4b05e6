"""Training presets and the names the CLI offers, without importing torch (fast ``--help``).

A preset fills every option of :class:`specdenoise.train.loop.TrainConfig` it names; options
given on the command line win. ``model_cfg`` holds per-model keyword arguments of
:func:`specdenoise.train.nets.build_model`.
"""

from __future__ import annotations

from specdenoise.train.nets import NETWORKS

#: the networks the CLI offers: the registry's (:data:`specdenoise.train.nets.NETWORKS`)
MODEL_NAMES = tuple(NETWORKS)
#: what a new run trains when the command line names no model or preset
DEFAULT_MODEL = "unet"
DEFAULT_PRESET = "quick"

PRESETS: dict[str, dict] = {
    # Pál & Dobos (2025): SGD, lr 0.1 -> 0.01 after 20 epochs, batch 100, 50 epochs, MSE
    "paper": {
        "epochs": 50, "batch_size": 100, "lr": 0.1, "optimizer": "sgd", "momentum": 0.0,
        "weight_decay": 0.0, "scheduler": "step", "lr_step_epoch": 20, "lr_gamma": 0.1,
        "loss": "mse",
        "model_cfg": {"unet": {}, "dae": {}, "physics": {"unet": {}}},
    },
    # what the paper's set-up leaves out: sigma as a second input channel, a loss on the
    # relative error, AdamW with a one-cycle schedule, epochs drawn from a large pool of
    # spectra (epoch_size) so that few are seen twice; no dropout; global context at the
    # bottleneck (pooled-feature modulation: -8.5 % mean |R| at the quick scale for no extra
    # cost, results/floor/); 35 epochs of 20,000 spectra (700,000, each pool spectrum seven
    # times with fresh noise): 217-284 s per epoch alone on two CPU cores, about 2.1-2.8 h,
    # inside issue 18's 4-hour budget; validation mean |R| 0.806 % (results/best/, 2026-12-06)
    "best": {
        "epochs": 35, "batch_size": 32, "lr": 3e-3, "optimizer": "adamw", "momentum": 0.0,
        "weight_decay": 1e-4, "scheduler": "onecycle", "lr_step_epoch": 20, "lr_gamma": 0.1,
        "loss": "rel_l1", "epoch_size": 20000,
        "model_cfg": {
            "unet": {"depth": 4, "filters": 16, "kernel_size": 5, "dropout": 0.0,
                     "in_channels": 2, "global_context": "pool"},
            "dae": {"widths": [1024, 256], "in_channels": 2},
            # the same U-Net behind an amortised template fit (it always sees sigma)
            "physics": {"unet": {"depth": 4, "filters": 16, "kernel_size": 5, "dropout": 0.0}},
        },
    },
}
PRESETS["tiny"] = {
    # a 42,649-parameter U-Net for three AdamW epochs: seconds, to try the commands and for the
    # tests; not for science
    "epochs": 3, "batch_size": 32, "lr": 3e-3, "optimizer": "adamw", "momentum": 0.0,
    "weight_decay": 1e-4, "scheduler": "cosine", "lr_step_epoch": 20, "lr_gamma": 0.1,
    "loss": "mse",
    "model_cfg": {"unet": {"depth": 3, "filters": 8}, "dae": {"widths": [512, 128]},
                  "physics": {"unet": {"depth": 3, "filters": 8},
                              "encoder": {"filters": [8, 16, 16, 32, 32, 32], "hidden": 64},
                              "emulator": {"hidden": [128, 256]}}},
}
# what a user should start with, and exactly what `specdenoise run --preset quick` trains: the
# best preset's network and ingredients for ten epochs of 3000 spectra drawn in turn from the
# training store
PRESETS["quick"] = {**PRESETS["best"], "epochs": 10, "epoch_size": 3000}
PRESETS = {name: PRESETS[name] for name in ("tiny", "quick", "paper", "best")}  # --help order

#: one line per preset for ``specdenoise train --help``
PRESET_HELP = {
    "tiny": "a 42,649-parameter U-Net (0.075 GFLOP per spectrum), 3 AdamW epochs: seconds; "
            "for trying the commands and for tests, not for science",
    "quick": "the best preset's U-Net (1,268,257 parameters, 1.02 GFLOP per spectrum) for 10 "
             "epochs of 3000 spectra: about 6 min on two CPU cores (86.6 spectra/s), what "
             "'run --preset quick' trains; start here",
    "paper": "the published set-up (U-Net 2,707,809 parameters, 2.54 GFLOP per spectrum; SGD "
             "lr 0.1, x0.1 after 20 epochs, batch 100, MSE) for 50 epochs of the whole store: "
             "77 min for 50 epochs of 1000 spectra here (10.9 spectra/s), hours for more",
    "best": "sigma as a second input, relative-error loss, AdamW one-cycle, global context at "
            "the bottleneck, 35 epochs of 20,000 spectra drawn in turn from a large pool "
            "(700,000 spectra): about 3.7 h on two CPU cores",
}
