"""Small helpers shared by every module, one module per job (each name is importable from here):

* :mod:`.validate`: the argument checks (``check_number``, ``check_choice``, ``check_images``, ...);
* :mod:`.runtime`: seeding, the device, the training fast path;
* :mod:`.modules`: borrowing a caller's module (``eval_mode``, ``borrowed``), its device, DDP's wrapper;
* :mod:`.env`: the version, the git commit, unattended notebook runs.
"""
from .env import VERSION, git_commit, running_unattended, show_progress
from .modules import borrowed, eval_mode, model_device, unwrap
from .runtime import (FastPath, MEMORY_FORMATS, PRECISIONS, choose_fast_path, cpu_has_native_bf16, get_device,
                      seed_everything)
from .validate import (check_choice, check_images, check_labels, check_model_input, check_number, inputs_checked,
                       inside_checked_scope)

__all__ = ["VERSION", "git_commit", "running_unattended", "show_progress", "borrowed", "eval_mode", "model_device",
           "unwrap", "FastPath", "MEMORY_FORMATS", "PRECISIONS", "choose_fast_path", "cpu_has_native_bf16",
           "get_device", "seed_everything", "check_choice", "check_images", "check_labels", "check_model_input",
           "check_number", "inputs_checked", "inside_checked_scope"]
