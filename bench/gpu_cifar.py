"""The CIFAR-10 GPU run of issue 32 (``make gpu-cifar``): ResNet-18 AFD on the reference recipe and PGD-AT
for the same time, then PGD-20 and AutoAttack at 8/255, all in one device call of 600 s.

For each method of ``--methods`` (default ``afd pgd_at``), in that order:

1. a timed probe of its training step (bf16 autocast + channels_last, batch ``--batch-size``) sets the
   number of epochs that fits its training budget: a step schedule needs its length up front, so the budget
   is met by the schedule, not by stopping a run half-way;
2. ``featlab train`` (through ``featlab.cli.main``) on all 50,000 training images, random crop + flip;
3. ``featlab eval``: clean and PGD-20 at 8/255 on ``--n-eval`` test images (a featlab record, with the
   checklist).

Then AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square; featlab's composition of torchattacks' parts,
100 iterations) on the same images, AFD's first, each on as many of the ``--n-eval`` images as the time
left before ``--deadline-s`` allows (in hundreds; the first AutoAttack's measured rate sizes the second).

The recipes (``RECIPES``), one model for both (``--model``, default ``resnet18_l2``):
- AFD: the reference (BashivanLab/afd, see ../shared/papers/README.md): ResNet-18 with the L2-normalised
  512-d feature and a plain linear head; SGD momentum 0.9 without Nesterov, rates E+C 0.1, E 0.5, D 0.1
  (``--lr 0.1 --lr-e 0.5 --lr-d 0.1``), weight decay 1e-4 on E+C (AFD's own), batch 128 (the reference's:
  the rates go with it). Training attack PGD-10, step 2/255 (featlab's 2.5 eps / steps: the reference's
  PGD step, half its 20 steps) or ``--train-attack apgd-ce``.
- PGD-AT (Madry et al. 2018, with Rice et al. 2020's step schedule): the same network, batch, attack,
  LR 0.1, momentum 0.9 without Nesterov and the same compressed schedule; weight decay 5e-4 (the usual
  PGD-AT value). The same ``resnet18_l2`` so that the objective is the only difference between the two
  rows, and the embeddings the lab's probes compare (separability, distortion) are unit vectors in both.
  ``--methods pgd_at --model resnet18`` trains the plain-embedding control.
- The schedule: the reference's 300 epochs with 10x drops at 150 and 250 are compressed to the E epochs
  that fit, drops at round(E/2) and round(5E/6) (``compressed_milestones``): 7 epochs drop the LRs 10x
  after epochs 4 and 6, 8 after 4 and 7, for all three of AFD's optimisers (the Trainer schedules them alike).
- Same time: a method after the first gets the first's measured training wall as its budget when that is
  below ``--train-budget-s``, so PGD-AT never trains longer than AFD did.

How the 600 s of one device call are spent (defaults; machine start-up and transfers are extra):

    start: imports, CUDA context, device record            10 s
    AFD:   probe 8 s, featlab train 160 s, pack 2 s, PGD-20 6 s     176 s
    PGD-AT: probe 4 s, featlab train <= 160 s, pack 2 s, PGD-20 6 s   172 s
    AutoAttack, n = 1,000: AFD 100 s, PGD-AT 100 s (+ pack 2 s each)  204 s
    total 562 s; ``--deadline-s 585`` leaves 15 s for the tool to collect $OUT.

Why 160 s of training each and not more: two AutoAttacks of 1,000 images take about a third of the call, and
AFD plus PGD-AT for the same time must share the rest (the issue's "6 minutes" of AFD alone would leave none).
CIFAR-10 must already be under ``FEATLAB_DATA`` on the machine (DEVELOPERS.md: carried in earlier calls);
whatever the call spends before this script starts, take off ``--deadline-s`` and the budgets.

Assumed, from the H200 run of 2026-11-27 (``bench/results/gpu_cifar_h200*``; an H100 has the same SM count
and slower memory: the probe measures whichever card it gets):
- PreAct ResNet-18, PGD-5 AT, batch 512, bf16 + channels_last: 0.0514 s a step, 7 passes (a pass: one
  forward + backward of the batch), i.e. 7.3 ms a pass of 512 images. At batch 128 a pass is launch-bound,
  about 3 ms, so a PGD-10 AT step (12 passes) takes ~0.036 s and an AFD step (13 passes and D's small
  updates) ~0.045 s: an epoch of 391 steps ~20.6 s (AFD) and ~16.5 s (PGD-AT) with the 15% margin below,
  so AFD gets 7 epochs (~151 s) and PGD-AT 8 in those 151 s (tests/test_gpu_cifar_script.py checks this
  plan). The probe replaces these guesses with the card's own numbers.
- ``featlab train`` spends 7 s before its first step (89.7 s call - 82.8 s loop) and its epochs ran 14%
  over the step arithmetic (5.91 s against 5.18 s: the loader, augmentation, checkpoint): ``START_S`` and
  ``MARGIN`` (1.15).
- PGD-20 on 1,000 images with the checklist: 2.6 s on the H200 (PreAct ResNet-18); 6 s with loading.
- AutoAttack on 1,000 images of a ~45%-robust ResNet-18 (fp32, one batch of ``--eval-batch`` 1,000):
  ~100 s (``--aa-s-per-image 0.1``): APGD-CE 100 iterations on all images, then on the ~450 robust ones
  APGD-T 9 x 100, FAB-T 9 x 100 and Square's 5,000 queries (~40 s alone: one small forward and its Python
  per query), at ~28 us per image-pass in fp32 (the H200's fp32/bf16 ratio of 2.07) plus ~3 ms of host
  work per iteration. Not measured yet: the first AutoAttack's wall is recorded and sizes the second.

Everything goes under ``--out`` (default ``$OUT``), written again after every stage, so a run stopped at its
time limit still returns the stages it finished: ``gpu_cifar.jsonl`` (one JSON line per stage),
``gpu_cifar_records.tgz`` (each run's config and history, every eval record) and each run's weights in fp16
(``gpu_<model>_<method>_part1/2.safetensors``, ResNet-18's 22 MB split in two: the device tool returns 8 files of at
most 16 MiB; two methods make 6 files).

    python bench/gpu_cifar.py [--out DIR] [--methods afd pgd_at] [--train-budget-s 160] [--deadline-s 585]
    python bench/gpu_cifar.py --smoke      # a CPU dry run of every stage: 200 training images, 1 epoch each,
                                           # batch 50, a 2-step training attack, 20 eval images, AutoAttack
                                           # planned but not run, the runs
                                           # under --out (bench/results/gpu_cifar_afd_smoke.txt)
"""
from __future__ import annotations

import time

T0 = time.monotonic()          # the deadline counts from here (before torch is imported)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import featlab  # noqa: E402
from featlab import checkpoint as ckpt, cli  # noqa: E402
from featlab._utils import inputs_checked  # noqa: E402
from featlab.attacks import step_size_for  # noqa: E402
from featlab.train import AFD, PGDAT, Trainer  # noqa: E402

EPS = 8 / 255
N_TRAIN = 50000
START_S = 7.0       # featlab train before its first step, CUDA already up (H200 run: 89.7 s call - 82.8 s loop)
MARGIN = 1.15       # measured epoch over the step arithmetic (H200 run: 5.91 s / 5.18 s = 1.14)
SMOKE_TRAIN = 200   # --smoke: training images of each method
REFERENCE_EPOCHS, REFERENCE_DROPS = 300, (150, 250)      # the AFD code's CIFAR-10 schedule


@dataclass(frozen=True)
class Recipe:
    """One method's training command, less what the budget decides (epochs, milestones)."""

    method: str
    args: tuple[str, ...]
    extra_passes: int      # passes (forward + backward of the batch) per step besides the attack's steps

    def passes_per_step(self, steps: int) -> int:
        return steps + self.extra_passes


RECIPES = {
    # the attack, then E+C on clean images, E(x) without gradient, E(x_adv) forward + backward for D and E
    "afd": Recipe("afd", ("--method", "afd", "--lr", "0.1", "--lr-e", "0.5", "--lr-d", "0.1"), 3),
    # the attack, then one forward + backward on x_adv (the convention of the H200 run's arithmetic)
    "pgd_at": Recipe("pgd_at", ("--method", "pgd_at", "--optimizer", "sgd", "--no-nesterov", "--lr", "0.1",
                                "--weight-decay", "5e-4"), 2),
}


def elapsed() -> float:
    return time.monotonic() - T0


def emit(out: Path, record: dict) -> None:
    line = json.dumps({"t_s": round(elapsed(), 1), **record})
    print(line, flush=True)
    with open(out / "gpu_cifar.jsonl", "a") as f:
        f.write(line + "\n")


def compressed_milestones(epochs: int) -> list[int]:
    """The reference's LR drops (after epochs 150 and 250 of 300) at the same fractions of ``epochs``, rounded
    half up; a drop at or after the last epoch is left out (it would never act)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1 (got {epochs})")
    drops = (math.floor(epochs * d / REFERENCE_EPOCHS + 0.5) for d in REFERENCE_DROPS)
    return sorted({m for m in drops if 1 <= m < epochs})


def epochs_for_budget(step_s: float, n_train: int, batch: int, passes_per_step: int, n_eval: int, budget_s: float,
                      max_epochs: int, start_s: float = START_S, margin: float = MARGIN) -> tuple[int, float]:
    """(epochs, estimated seconds per epoch): as many epochs as fit ``budget_s`` after ``start_s`` of start-up,
    between 1 and ``max_epochs``.

    An epoch is its training steps (``step_s`` each, ``passes_per_step`` passes) and the trainer's per-epoch
    PGD-10 check on ``n_eval`` test images (11 passes, no update), times ``margin``.
    """
    if step_s <= 0 or budget_s <= 0:
        raise ValueError(f"step_s and budget_s must be > 0 (got {step_s}, {budget_s})")
    if passes_per_step < 1:
        raise ValueError(f"passes_per_step must be >= 1 (got {passes_per_step})")
    epoch_s = margin * step_s * (math.ceil(n_train / batch) + (11 / passes_per_step) * math.ceil(n_eval / batch))
    return max(1, min(max_epochs, int((budget_s - start_s) // epoch_s))), epoch_s


def plan_budgets(methods: list[str], budget_s: float, first_wall_s: float | None) -> dict[str, float]:
    """Each method's training budget: ``budget_s`` for the first; for the others the first's measured wall
    when it is smaller (no method trains longer than the first did), else ``budget_s``."""
    later = budget_s if first_wall_s is None else min(budget_s, first_wall_s)
    return {m: (budget_s if i == 0 else later) for i, m in enumerate(methods)}


def aa_images_that_fit(n: int, seconds_left: float, s_per_image: float, step: int = 100) -> int:
    """How many of the ``n`` eval images AutoAttack can take in ``seconds_left`` at ``s_per_image``: all ``n``
    if they fit, else the most whole ``step``s that fit (0: none)."""
    if n < 1 or s_per_image <= 0:
        raise ValueError(f"n must be >= 1 and s_per_image > 0 (got {n}, {s_per_image})")
    if n * s_per_image <= seconds_left:
        return n
    return min(n, max(0, int(seconds_left / s_per_image) // step * step))


def build_step(method: str, model_name: str, steps: int, attack: str, batch: int, device: str) -> Trainer:
    """A Trainer with ``method``'s objective and optimiser as ``featlab train`` builds them (the rates do not
    change the time of a step)."""
    model = featlab.models.create(model_name)
    if method == "afd":
        obj = AFD(model, eps=EPS, steps=steps, step_size=step_size_for(EPS, steps), attack=attack,
                  lr_ec=0.1, lr_e=0.5, lr_d=0.1)
        return Trainer(model, obj, optimizer=obj.optimizer_ec, batch_size=batch, device=device, progress=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return Trainer(model, PGDAT(eps=EPS, steps=steps, attack=attack), optimizer=opt, batch_size=batch,
                   device=device, progress=False)


def probe_step_s(method: str, model_name: str, steps: int, attack: str, batch: int, device: str, n: int = 10,
                 warmup: int = 3) -> float:
    """Median seconds of one training step of ``method`` on random images (the time of a step does not depend
    on the pixels), after ``warmup`` steps."""
    featlab.seed_everything(0)
    t = build_step(method, model_name, steps, attack, batch, device)
    x = torch.rand(batch, 3, 32, 32, device=t.device)
    y = torch.randint(0, 10, (batch,), device=t.device)
    sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
    times = []
    with inputs_checked():            # as in the training loop: no value check (a device sync) per forward
        for i in range(warmup + n):
            sync()
            t0 = time.perf_counter()
            t.objective.train_step(t.prepare_batch(x), y)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    del t
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return sorted(times)[len(times) // 2]


def pack(out: Path, runs: dict[str, Path], results: Path, weights_of: Path | None = None) -> None:
    """Every run's config and history and every eval record (one tarball), and, for ``weights_of``, the
    run's weights in fp16, in two safetensors files of about half the bytes each."""
    tmp = out / "gpu_cifar_records.tgz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for run in runs.values():
            for f in ("config.json", "history.json"):
                if (run / f).exists():
                    tar.add(run / f, arcname=f"runs/{run.name}/{f}")
        if results.exists():
            for f in sorted(results.glob("*.json")):
                tar.add(f, arcname=f"results/{f.name}")
    os.replace(tmp, out / "gpu_cifar_records.tgz")
    if weights_of is None or not (weights_of / "checkpoint.pt").exists():
        return
    from safetensors.torch import save_file
    state = ckpt.load(weights_of / "checkpoint.pt")["model"]     # checksummed, weights_only
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    total, acc, first = sum(v.numel() * v.element_size() for v in half.values()), 0, []
    for k, v in half.items():                 # the first half of the bytes, then the rest
        if acc < total / 2:
            first.append(k)
            acc += v.numel() * v.element_size()
    config = json.loads((weights_of / "config.json").read_text())
    hist = weights_of / "history.json"
    meta = {"model": config["model"], "method": config["method"], "epochs_planned": str(config["epochs"]),
            "epochs_done": str(len(json.loads(hist.read_text())["history"])) if hist.exists() else "?"}
    for i, part in enumerate((first, [k for k in half if k not in first])):
        save_file({k: half[k] for k in part}, str(out / f"{weights_of.name}_part{i + 1}.safetensors"),
                  metadata=meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "build/gpu_cifar"))
    p.add_argument("--runs-dir", default="runs", help="where the training runs go (gpu_<model>_<method>)")
    p.add_argument("--methods", nargs="+", choices=sorted(RECIPES), default=["afd", "pgd_at"],
                   help="trained in this order; each later one for at most the first's measured time")
    p.add_argument("--model", choices=sorted(featlab.models.MODELS), default="resnet18_l2")
    p.add_argument("--train-budget-s", type=float, default=160.0,
                   help="seconds of each featlab train call (its start-up included)")
    p.add_argument("--deadline-s", type=float, default=585.0,
                   help="seconds from this script's start by which AutoAttack must be done (sizes its n)")
    p.add_argument("--max-epochs", type=int, default=REFERENCE_EPOCHS)
    p.add_argument("--steps", type=int, default=10, help="steps of the training attack (PGD step 2.5 * eps / steps)")
    p.add_argument("--train-attack", choices=["pgd", "apgd-ce"], default="pgd")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--eval-batch", type=int, default=1000, help="featlab eval --batch-size (one batch: AutoAttack's "
                   "per-iteration host work is paid once)")
    p.add_argument("--aa-s-per-image", type=float, default=0.1,
                   help="assumed AutoAttack seconds per image until the first one is measured")
    p.add_argument("--no-autoattack", action="store_true")
    p.add_argument("--skip-train", action="store_true", help="evaluate the finished runs in --runs-dir")
    p.add_argument("--smoke", action="store_true",
                   help=f"CPU dry run of every stage: {SMOKE_TRAIN} train images, 1 epoch each, batch 50, a 2-step "
                        "training attack, 20 eval images, AutoAttack planned but not run")
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        print(f"gpu-cifar: no CUDA device on this machine (torch {torch.__version__}); nothing to run. "
              "Run it on a GPU machine, or `--smoke` to check the script on a CPU.")
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.smoke:      # small everything, and its own run folders (a real run never resumes a smoke checkpoint)
        # the training attack's steps too: the code path is the same, and ResNet-18 at 11 passes per step took 4 of
        # the smoke's minutes on a CPU without native bf16
        a.n_eval, a.eval_batch, a.batch_size, a.steps = 20, 20, 50, min(a.steps, 2)
        runs_dir = out / "smoke_runs"
    else:
        runs_dir = Path(a.runs_dir)
    runs = {m: runs_dir / f"gpu_{a.model}_{m}" for m in a.methods}
    results = runs_dir / "gpu_cifar_results"
    device = "cuda" if cuda else "cpu"
    # cudnn.benchmark stays off: the evaluation's early exit shrinks the batch to a new size at every step, and a
    # benchmark per new shape cost 2-21 s per PGD-10 batch of 500 on an H200 (the first run of this script)
    info = {"check": "device", "name": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "argv": sys.argv[1:] if argv is None else argv}
    try:
        import torchattacks
        info["torchattacks"] = torchattacks.__version__
    except ImportError:
        info["torchattacks"] = None
    emit(out, info)

    failed: list[str] = []

    def stage(check: str, method: str, fn, *args):
        """One stage; a failure is recorded (its error and the end of its traceback) and the run goes on with
        the next stage, so one broken stage does not cost the device call's other results."""
        try:
            return fn(*args)
        except (Exception, SystemExit) as e:          # featlab.cli.main exits on a usage error
            failed.append(f"{check} {method}")
            emit(out, {"check": check, "method": method, "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()[-2000:]})
            return None

    first_wall = None
    for method in a.methods:
        if not a.skip_train:
            budget = plan_budgets(a.methods, a.train_budget_s, first_wall)[method]
            wall = stage("train", method, train_run, a, method, budget, out, runs, results, device)
            first_wall = wall if first_wall is None else first_wall
        if (runs[method] / "checkpoint.pt").exists():
            stage("eval pgd20", method, evaluate, a, method, ["--attacks", "pgd20"], a.n_eval, out, runs, results,
                  device)
    if not a.no_autoattack:
        s_per_image = a.aa_s_per_image
        for method in [m for m in a.methods if (runs[m] / "checkpoint.pt").exists()]:
            n = aa_images_that_fit(a.n_eval, a.deadline_s - elapsed(), s_per_image)
            emit(out, {"check": "plan autoattack", "method": method, "n": n, "of": a.n_eval,
                       "seconds_left": round(a.deadline_s - elapsed(), 1), "s_per_image": round(s_per_image, 4)})
            if n == 0 or a.smoke:        # the smoke run plans AutoAttack but does not run it (minutes on a CPU)
                continue
            aa = ["--attacks", "autoattack", "--large-eps", "0"]
            wall = stage("eval autoattack", method, evaluate, a, method, aa, n, out, runs, results, device)
            s_per_image = wall / n if wall else s_per_image        # measured: sizes the next one
    print(f"gpu-cifar: done{'; failed: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


def train_run(a: argparse.Namespace, method: str, budget_s: float, out: Path, runs: dict[str, Path], results: Path,
              device: str) -> float:
    """Probe, ``featlab train``, pack; returns the train call's wall seconds."""
    recipe, run = RECIPES[method], runs[method]
    n_train = SMOKE_TRAIN if a.smoke else N_TRAIN
    t0 = time.perf_counter()
    step_s = probe_step_s(method, a.model, a.steps, a.train_attack, a.batch_size, device,
                          n=1 if a.smoke else 10, warmup=1 if a.smoke else 3)
    epochs, epoch_s = epochs_for_budget(step_s, n_train, a.batch_size, recipe.passes_per_step(a.steps), a.n_eval,
                                        budget_s, a.max_epochs)
    epochs = 1 if a.smoke else epochs
    milestones = compressed_milestones(epochs)
    emit(out, {"check": "probe", "method": method, "model": a.model, "attack": f"{a.train_attack}{a.steps}",
               "batch": a.batch_size, "step_s": round(step_s, 4), "images_per_s": round(a.batch_size / step_s, 1),
               "epoch_s_estimate": round(epoch_s, 1), "epochs": epochs, "milestones": milestones,
               "train_budget_s": round(budget_s, 1), "probe_wall_s": round(time.perf_counter() - t0, 1)})

    train = ["train", "--dataset", "cifar10", "--model", a.model, *recipe.args, "--epochs", str(epochs),
             "--batch-size", str(a.batch_size), "--lr-schedule", "step", "--eps", repr(EPS),
             "--attack-steps", str(a.steps), "--train-attack", a.train_attack, "--eval-n", str(a.n_eval),
             "--device", device, "--out", str(run)]
    if milestones:
        train += ["--milestones", *map(str, milestones)]
    if a.smoke:
        train += ["--limit", str(n_train)]
    t0 = time.perf_counter()
    cli.main(train)
    wall = time.perf_counter() - t0
    hist = json.loads((run / "history.json").read_text())["history"]
    emit(out, {"check": "train", "method": method, "wall_s": round(wall, 1), "epochs": len(hist), "last": hist[-1]})
    pack(out, runs, results, weights_of=run)
    return wall


def evaluate(a: argparse.Namespace, method: str, attack_args: list[str], n: int, out: Path, runs: dict[str, Path],
             results: Path, device: str) -> float:
    """One ``featlab eval`` of ``method``'s run on the first ``n`` test images; returns its wall seconds."""
    run = runs[method]
    t0 = time.perf_counter()
    cli.main(["eval", "--run", str(run), *attack_args, "--eps", repr(EPS), "--n-eval", str(n),
              "--batch-size", str(min(n, a.eval_batch)), "--device", device, "--results-dir", str(results)])
    wall = time.perf_counter() - t0
    recs = []
    for f in sorted(results.glob(f"{run.name}_*.json")):
        r = json.loads(f.read_text())
        if r.get("attack") == attack_args[1] and r.get("n_eval") == n:
            recs.append({k: r.get(k) for k in ("attack", "eps", "n_eval", "clean_acc", "robust_acc", "wall_s")})
    emit(out, {"check": "eval " + attack_args[1], "method": method, "wall_s": round(wall, 1), "records": recs})
    pack(out, runs, results)
    return wall


if __name__ == "__main__":
    sys.exit(main())
