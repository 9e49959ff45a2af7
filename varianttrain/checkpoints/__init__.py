"""Reading model weights: every file this project reads weights from, with errors that say what the file is.

One module per kind of file (import from `varianttrain.checkpoints`; the names below are its API):

* `files`: reading a file (`read_file`) and `CheckpointError`, raised by every reader;
* `var`: VAR weights from a released file, the official trainer's checkpoint, this project's Lightning checkpoints
  and exports (`load_var_weights` into a model; `load_var` / `load_exported_var` / `load_var_with_metadata` build
  the VAR a file describes);
* `vqvae`: VQVAE weights from the released file or a checkpoint (`load_vqvae_weights`, `load_vqvae`) and the
  tokenizer export `vqvae.pth` + `vqvae.json` (`save_vqvae_export`, `load_exported_vqvae`);
* `export_format`: the VAR export that `varianttrain.export` writes (metadata schema, `load_export`);
* `demo_classifier`: the demo classifier file `classifier.pt` (`save_demo_classifier`, `load_demo_extractor`).

A file that does not fit the model is never loaded partially: the error names what the file contains, what the
config asks for, and the missing / unexpected keys. See checkpoints/README.md for the files themselves.
"""

from __future__ import annotations

from varianttrain.checkpoints.demo_classifier import (
    CLASSIFIER_FORMAT,
    CLASSIFIER_FORMAT_VERSION,
    load_demo_extractor,
    save_demo_classifier,
)
from varianttrain.checkpoints.export_format import EXPORT_FORMAT, EXPORT_VERSION, load_export, var_config_from_metadata
from varianttrain.checkpoints.files import DOCS_HINT, CheckpointError, read_file
from varianttrain.checkpoints.var import (
    VARCheckpointInfo,
    extract_var_state_dict,
    inspect_var_state_dict,
    load_exported_var,
    load_var,
    load_var_weights,
    load_var_with_metadata,
    var_config_from_state,
)
from varianttrain.checkpoints.vqvae import (
    VQVAE_EXPORT_FORMAT,
    VQVAE_EXPORT_VERSION,
    extract_vqvae_state_dict,
    load_exported_vqvae,
    load_vqvae,
    load_vqvae_weights,
    save_vqvae_export,
)

__all__ = [
    "CLASSIFIER_FORMAT",
    "CLASSIFIER_FORMAT_VERSION",
    "DOCS_HINT",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "VQVAE_EXPORT_FORMAT",
    "VQVAE_EXPORT_VERSION",
    "CheckpointError",
    "VARCheckpointInfo",
    "extract_var_state_dict",
    "extract_vqvae_state_dict",
    "inspect_var_state_dict",
    "load_demo_extractor",
    "load_export",
    "load_exported_var",
    "load_exported_vqvae",
    "load_var",
    "var_config_from_state",
    "load_var_weights",
    "load_var_with_metadata",
    "load_vqvae",
    "load_vqvae_weights",
    "read_file",
    "save_demo_classifier",
    "save_vqvae_export",
    "var_config_from_metadata",
]
