"""Command line: parse flags into featlab.experiments' configs and call it (the notebooks call the same functions).

    featlab train --dataset mnist --model mnist_cnn --method pgd_at --epochs 8 --out runs/mnist_pgd_at
    featlab eval --run runs/mnist_pgd_at --attacks pgd40 fgsm --eps 0.3 --n-eval 1000
    featlab eval --pretrained mnist_afd --attacks pgd40 autoattack --eps 0.3   # a shipped model
    featlab eval --module my_cnn.py:build --weights w.pt --dataset mnist      # your own classifier
    featlab probe --run runs/a --run runs/b --eps 0.1 0.2 0.3
    featlab notebooks --out build            # execute every notebook (see featlab.runner)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from . import data, distributed, experiments, models, pretrained, runs
from ._utils import check_number, get_device
from .attacks import from_spec
from .experiments import ConfigError, EvalConfig, TrainConfig, config_from


# --------------------------------------------------------------------------- flag types (checked before any loading)
def _checked(kind, **rule):
    """An argparse type: ``kind(text)`` then featlab's one number check (``featlab._utils.check_number``)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        try:
            check_number("value", v, integer=kind is int, **rule)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text}{str(e).removeprefix('value')}".rsplit(", got", 1)[0]) from None
        return v
    parse.__name__ = "integer" if kind is int else "number"
    return parse


def _int_at_least(low: int):
    return _checked(int, low=low)


def _float_in(low: float, high: float | None = None, low_open: bool = False):
    return _checked(float, low=low, high=high, low_open=low_open)


def _arg_check(fn, prefix: str = ""):
    def parse(text: str) -> str:
        try:
            fn(text)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e).replace(prefix, "")) from None
        return text
    return parse


def _run_folder(text: str) -> str:
    missing = runs.missing_files(text)
    if missing:
        raise ValueError(f"{text} is not a featlab run folder (no {' or '.join(missing)} in {runs.folder_of(text)})")


def _classifier_ref(text: str) -> None:
    """A classifier for a denoiser: a run folder, or ``pretrained:NAME`` (a shipped classifier)."""
    if not text.startswith("pretrained:"):
        return _run_folder(text)
    if pretrained.info(text.split(":", 1)[1])["kind"] != "classifier":
        raise ValueError(f"{text} is a denoiser; a shipped classifier is needed: {pretrained.available('classifier')}")


def _existing_folder(text: str) -> None:
    if not Path(text).is_dir():
        raise ValueError(f"{text} is not a folder (featlab eval writes its records there)")
_attack_spec = _arg_check(lambda t: from_spec(t, models.create("mnist_cnn"), 0.1), "attacks: ")
_pretrained_name = _arg_check(pretrained.info, "name: ")
_run = _arg_check(_run_folder, "run: ")
_classifier = _arg_check(_classifier_ref, "run: ")
_folder = _arg_check(_existing_folder)


# --------------------------------------------------------------------------- commands: parse -> config -> call
def cmd_train(a: argparse.Namespace) -> None:
    values = {**vars(a), "nesterov": not a.no_nesterov}
    history = experiments.train(config_from(TrainConfig, values))
    print(json.dumps(history[-1]))


def _target(a: argparse.Namespace, device) -> experiments.Target:
    if getattr(a, "module", None) and a.dataset is None:
        raise ConfigError("dataset", f"required with --module; allowed: {sorted(data.DATASETS)}")
    module = experiments.user_model(a.module, a.dataset, a.weights, a.mean, a.std) if getattr(a, "module", None) else None
    return experiments.resolve(run=a.run, pretrained_name=a.pretrained, control=getattr(a, "control", None),
                               module=module, dataset=getattr(a, "dataset", None),
                               classifier_run=getattr(a, "classifier_run", None), command=a.command, device=device)


def cmd_eval(a: argparse.Namespace) -> None:
    device = distributed.init(a.device)        # under torchrun: the images are shared out (featlab.metrics)
    config = config_from(EvalConfig, vars(a))  # checked before the model loads
    experiments.evaluate(_target(a, device), config, device)


def cmd_separability(a: argparse.Namespace) -> None:
    target = _target(a, get_device(a.device))
    experiments.separability(target, a.eps, attack_steps=a.attack_steps, n=a.n, steps=a.steps, seed=a.seed,
                             results_dir=a.results_dir, command=a.command)


def cmd_probe(a: argparse.Namespace) -> None:
    experiments.probe_runs(a.run, a.eps, steps=a.steps, n_eval=a.n_eval, seed=a.seed, name=a.name,
                           results_dir=a.results_dir, command=a.command, device=get_device(a.device))


def cmd_export(a: argparse.Namespace) -> None:
    path = experiments.export(a.run, a.name, classifier=a.classifier, metrics_path=a.metrics)
    print(f"-> {path} ({path.stat().st_size / 1e6:.2f} MB)")


def cmd_results(a: argparse.Namespace) -> None:
    from .results import write_markdown
    print(f"-> {write_markdown(a.results_dir, a.out)}")


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model with one objective; resumable run folder")
    t.add_argument("--dataset", choices=sorted(data.DATASETS), default=None)
    t.add_argument("--model", choices=sorted(models.MODELS), default="mnist_cnn")
    t.add_argument("--method", choices=experiments.METHODS, default="standard")
    t.add_argument("--epochs", type=_int_at_least(1), default=1)
    t.add_argument("--batch-size", type=_int_at_least(1), default=128)
    t.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    t.add_argument("--no-nesterov", action="store_true",
                   help="sgd: plain momentum (as AFD's own E+C optimiser), not Nesterov's")
    t.add_argument("--lr", type=_float_in(0.0, low_open=True), default=None,
                   help="learning rate (default: 1e-3 for adam, 0.1 for sgd and for afd's E+C, as in the AFD code)")
    t.add_argument("--weight-decay", type=_float_in(0.0), default=5e-4)
    t.add_argument("--milestones", type=_int_at_least(1), nargs="*", default=[],
                   help="epochs after which the LR drops 10x (the step schedule)")
    t.add_argument("--lr-schedule", choices=["step", "triangle"], default="step",
                   help="step: constant LR, --milestones drops; triangle: one-cycle per step (fast CIFAR recipes)")
    t.add_argument("--warmup-epochs", type=_float_in(0.0), default=None,
                   help="triangle: epochs of linear warm-up (default: a fifth of --epochs)")
    t.add_argument("--label-smoothing", type=_float_in(0.0, 1.0), default=0.0, help="standard: cross-entropy label smoothing")
    t.add_argument("--eps", type=_float_in(0.0), default=0.3)
    t.add_argument("--attack-steps", type=_int_at_least(1), default=10)
    t.add_argument("--step-size", type=_float_in(0.0, low_open=True), default=None, help="attack step (default 2.5 * eps / steps)")
    t.add_argument("--beta", type=_float_in(0.0), default=6.0, help="trades: weight of the KL term")
    t.add_argument("--afd-loss", choices=["wgan", "bce"], default="wgan", help="afd: discriminator loss")
    t.add_argument("--afd-no-game", action="store_true",
                   help="afd: the mechanism ablation: no encoder update against the discriminator")
    t.add_argument("--train-attack", choices=["pgd", "apgd-ce"], default="pgd",
                   help="afd, pgd_at: the attack that makes x_adv (AFD's MNIST code: apgd-ce, --attack-steps 40)")
    t.add_argument("--lr-e", type=_float_in(0.0, low_open=True), default=0.5, help="afd: learning rate of the encoder's adversarial step")
    t.add_argument("--lr-d", type=_float_in(0.0, low_open=True), default=0.5, help="afd: learning rate of the discriminator")
    t.add_argument("--eps-start", type=_float_in(0.0), default=None)
    t.add_argument("--ramp-epochs", type=_int_at_least(0), default=0)
    t.add_argument("--limit", type=_int_at_least(1), default=None, help="train on a stratified subset")
    t.add_argument("--classifier-run", type=_classifier, default=None,
                   help="denoiser: the frozen classifier to defend: a run folder, or pretrained:NAME")
    t.add_argument("--extractor-run", type=_classifier, default=None,
                   help="denoiser: the feature loss's extractor, run folder or pretrained:NAME (default: the classifier)")
    t.add_argument("--denoiser", choices=["residual", "unet", "bottleneck"], default="residual",
                   help="denoiser: architecture (featlab.defenses.DENOISERS; residual won the screen of notebook 02)")
    t.add_argument("--feature-taps", nargs="*", default=None,
                   help="denoiser: taps of the feature loss (default: all spatial taps; none: pixel loss only)")
    t.add_argument("--pixel-weight", type=_float_in(0.0), default=0.0, help="denoiser: weight of the pixel MSE term")
    t.add_argument("--eps-min", type=_float_in(0.0), default=0.05, help="denoiser: low end of the training eps range")
    t.add_argument("--width", type=_int_at_least(1), default=None,
                   help="denoiser: channels at full resolution (default 32 bottleneck, 16 U-Nets)")
    t.add_argument("--depth", type=_int_at_least(1), default=2, help="denoiser: down-sampling levels")
    t.add_argument("--eval-n", type=_int_at_least(1), default=1000)
    t.add_argument("--seed", type=_int_at_least(0), default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm)")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32 (evaluation is always fp32)")
    t.add_argument("--memory-format", choices=["auto", "contiguous", "channels_last"], default="auto",
                   help="auto: channels_last with bf16 and on CUDA")
    t.add_argument("--out", required=True)
    t.set_defaults(func=cmd_train)


def _eval_parser(sub, common: argparse.ArgumentParser) -> None:
    e = sub.add_parser("eval", parents=[common], help="evaluate a run folder or a shipped model; writes results/*.json")
    target = e.add_mutually_exclusive_group(required=True)
    target.add_argument("--pretrained", type=_pretrained_name, default=None, metavar="NAME",
                        help="a model shipped with featlab (featlab.pretrained.available(), or an alias)")
    target.add_argument("--run", "--checkpoint", dest="run", type=_run,
                        help="a run folder of featlab train (or its checkpoint.pt); under torchrun write "
                             "--checkpoint (torchrun takes --run for its own --run-path)")
    target.add_argument("--control", choices=experiments.CONTROLS, default=None,
                        help="a preprocessing control (featlab.defenses.CONTROLS) in front of --classifier-run")
    target.add_argument("--module", default=None, metavar="FILE.py:CALLABLE",
                        help="your own classifier: CALLABLE() returns the nn.Module (FILE.py or package.module), "
                             "wrapped by featlab.models.wrap; needs --dataset")
    e.add_argument("--weights", default=None, help="--module: a state dict to load (weights_only)")
    e.add_argument("--dataset", choices=sorted(data.DATASETS), default=None, help="--module: its dataset")
    e.add_argument("--mean", type=float, nargs="+", default=None, help="--module: its per-channel normalisation")
    e.add_argument("--std", type=_float_in(0.0, low_open=True), nargs="+", default=None)
    e.add_argument("--classifier-run", type=_classifier, default=None,
                   help="a run folder or pretrained:NAME: the classifier behind --control, or behind a denoiser (transfer)")
    e.add_argument("--attacks", type=_attack_spec, nargs="+", default=["pgd40"])
    e.add_argument("--eps", type=_float_in(0.0), nargs="+", default=[0.3])
    e.add_argument("--norm", choices=["linf", "l2"], default="linf")
    e.add_argument("--n-eval", type=_int_at_least(1), default=1000)
    e.add_argument("--large-eps", type=_float_in(0.0), default=None,
                   help="eps of the checklist's 'reaches ~0' point (default 1.0 in Linf; 0 turns it off)")
    e.add_argument("--batch-size", type=_int_at_least(1), default=500)
    e.set_defaults(func=cmd_eval)


def _other_parsers(sub, common: argparse.ArgumentParser) -> None:
    ex = sub.add_parser("export", help="ship a run's weights (float16) as featlab.pretrained.load(NAME)")
    ex.add_argument("--run", type=_run, required=True)
    ex.add_argument("--name", required=True)
    ex.add_argument("--classifier", default=None, help="denoiser runs: the pretrained name of its classifier")
    ex.add_argument("--metrics", default=None, help="a JSON object of measurements to ship in the manifest entry")
    ex.set_defaults(func=cmd_export)
    rs = sub.add_parser("results", help="render results/RESULTS.md from results/*.json")
    rs.add_argument("--results-dir", type=_folder, default="results")
    rs.add_argument("--out", default=None, help="default: <results-dir>/RESULTS.md")
    rs.set_defaults(func=cmd_results)
    pr = sub.add_parser("probe", parents=[common], help="feature distortion per tap, adversarial vs random noise")
    pr.add_argument("--run", type=_run, action="append", required=True, help="a run folder (repeat for several)")
    pr.add_argument("--eps", type=_float_in(0.0, 1.0), nargs="+", default=[0.1, 0.2, 0.3])
    pr.add_argument("--steps", type=_int_at_least(1), default=40)
    pr.add_argument("--n-eval", type=_int_at_least(1), default=1000)
    pr.add_argument("--name", default="probe")
    pr.set_defaults(func=cmd_probe)
    sp = sub.add_parser("separability", parents=[common],
                        help="AFD's probe: can a fresh discriminator tell clean from adversarial embeddings?")
    st = sp.add_mutually_exclusive_group(required=True)
    st.add_argument("--pretrained", type=_pretrained_name, default=None, metavar="NAME")
    st.add_argument("--run", type=_run, default=None)
    sp.add_argument("--eps", type=_float_in(0.0, 1.0), default=0.3)
    sp.add_argument("--attack-steps", type=_int_at_least(1), default=10)
    sp.add_argument("--n", type=_int_at_least(8), default=2048, help="training images embedded (a quarter held out)")
    sp.add_argument("--steps", type=_int_at_least(1), default=400, help="the probe's SGD steps")
    sp.set_defaults(func=cmd_separability)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)        # every command that loads a model and writes records
    common.add_argument("--seed", type=_int_at_least(0), default=0)
    common.add_argument("--device", default="auto")
    common.add_argument("--results-dir", default="results")
    p = argparse.ArgumentParser(prog="featlab", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True)
    _train_parser(sub)
    _eval_parser(sub, common)
    _other_parsers(sub, common)
    # listed for --help; `featlab notebooks ...` is handed to the runner's own parser (main)
    sub.add_parser("notebooks", help="execute notebooks with papermill -> build/ (featlab notebooks --help)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["notebooks"]:          # `featlab notebooks ...`: the papermill runner's own options
        from .runner import main as run_notebooks
        run_notebooks(argv[1:])
        return
    p = build_parser()
    a = p.parse_args(argv)                  # flag values are checked here, before anything loads (exit 2)
    a.command = "featlab " + " ".join(shlex.quote(x) for x in argv)     # what reproduces this call, in records
    if a.cmd == "eval" and a.control and not a.classifier_run:
        p.error("argument --classifier-run: required with --control (the classifier the control defends)")
    for flag in ("weights", "dataset", "mean", "std") if a.cmd == "eval" and not a.module else ():
        if getattr(a, flag) is not None:
            p.error(f"argument --{flag}: only with --module (a shipped model or run folder knows its own)")
    if distributed.env_world_size() > 1 and os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")      # under torchrun rank 0 speaks (errors still reach stderr)
    finished = False
    try:
        a.func(a)
        finished = True
    except ConfigError as err:                # a setting that is wrong or disagrees with another: usage error, exit 2
        if a.debug:
            raise
        p.error(f"argument --{err.field.replace('_', '-')}: {err.reason}")
    except (ValueError, TypeError, RuntimeError, OSError, KeyError) as err:
        if a.debug:
            raise
        # one line, naming what was wrong (featlab's errors name their argument); --debug for the traceback
        print(f"featlab {a.cmd}: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
              file=sys.stderr)
        sys.exit(1)
    finally:
        distributed.shutdown(clean=finished)


if __name__ == "__main__":
    main()
