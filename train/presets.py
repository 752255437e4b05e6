"""Training presets and the names the CLI offers, without importing torch (fast ``--help``).

A preset fills every option of :class:`specdenoise.train.loop.TrainConfig` it names; options
given on the command line win. ``model_cfg`` holds per-model keyword arguments of
:func:`specdenoise.train.models.build_model`.
"""

from __future__ import annotations

#: the networks :func:`specdenoise.train.models.build_model` knows (checked against it in tests)
MODEL_NAMES = ("unet", "dae", "physics")
#: what a new run trains when the command line names no model or preset
DEFAULT_MODEL = "unet"
DEFAULT_PRESET = "paper"

PRESETS: dict[str, dict] = {
    # Pál & Dobos (2025): SGD, lr 0.1 -> 0.01 after 20 epochs, batch 100, 50 epochs, MSE
    "paper": {
        "epochs": 50, "batch_size": 100, "lr": 0.1, "optimizer": "sgd", "momentum": 0.0,
        "weight_decay": 0.0, "scheduler": "step", "lr_step_epoch": 20, "lr_gamma": 0.1,
        "loss": "mse",
        "model_cfg": {"unet": {}, "dae": {}, "physics": {"unet": {}}},
    },
    # a small model and a few AdamW epochs: minutes on a laptop CPU
    "quick": {
        "epochs": 3, "batch_size": 32, "lr": 3e-3, "optimizer": "adamw", "momentum": 0.0,
        "weight_decay": 1e-4, "scheduler": "cosine", "lr_step_epoch": 20, "lr_gamma": 0.1,
        "loss": "mse",
        "model_cfg": {"unet": {"depth": 3, "filters": 8}, "dae": {"widths": [512, 128]},
                      "physics": {"unet": {"depth": 3, "filters": 8},
                                  "encoder": {"filters": [8, 16, 16, 32, 32, 32], "hidden": 64},
                                  "emulator": {"hidden": [128, 256]}}},
    },
    # what the paper's set-up leaves out: sigma as a second input channel, a loss on the
    # relative error, AdamW with a one-cycle schedule, epochs drawn from a large pool of
    # spectra (epoch_size) so that few are seen twice; no dropout
    "best": {
        "epochs": 20, "batch_size": 32, "lr": 3e-3, "optimizer": "adamw", "momentum": 0.0,
        "weight_decay": 1e-4, "scheduler": "onecycle", "lr_step_epoch": 20, "lr_gamma": 0.1,
        "loss": "rel_l1", "epoch_size": 20000,
        "model_cfg": {
            "unet": {"depth": 4, "filters": 16, "kernel_size": 5, "dropout": 0.0,
                     "in_channels": 2},
            "dae": {"widths": [1024, 256], "in_channels": 2},
            # the same U-Net behind an amortised template fit (it always sees sigma)
            "physics": {"unet": {"depth": 4, "filters": 16, "kernel_size": 5, "dropout": 0.0}},
        },
    },
}

#: one line per preset for ``specdenoise train --help``
PRESET_HELP = {
    "paper": "the published set-up: SGD lr 0.1, x0.1 after 20 epochs, batch 100, 50 epochs, "
             "MSE",
    "quick": "small model, 3 AdamW epochs, cosine schedule",
    "best": "sigma as a second input, relative-error loss, AdamW one-cycle, 20,000 fresh "
            "spectra an epoch from a large pool, 20 epochs (400,000 spectra)",
}
