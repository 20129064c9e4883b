"""Study label-free signals that could predict when reclip ends below zero-shot, and choose
the safeguard's rule at several target sizes, on dev targets only (Fashion-MNIST TRAIN split;
never the reported ones).

    python benchmarks/choose_safeguard.py --seeds 0 1 --sizes 300 1000 \
        --targets <DEV_TARGETS> train-impulse_noise-5 train-snow-5 train-elastic_transform-5 \
        --borrow benchmarks/results/safeguard_dev.json --out benchmarks/results/safeguard_sizes.json

For every dev target, size and seed it runs reclip with the defaults but both safeguard checks
off (the library's ``ReCLIP``; features come from the cache), zero-shot and label propagation
being read from the same run, and records without labels:

- ``head_agreement``: the safeguard's first signal, T's and V's heads agreeing at the end, and
  ``chance_agreement``, what two heads with the same predicted-class histograms would reach by chance;
- ``estimated_gain``: its second, the top-1 gain of reclip's predictions over zero-shot's that
  label propagation's probabilities on the frozen model, taken as soft labels, predict, and
  ``estimated_gain_sd``, the standard deviation of its per-image terms;
- ``agree_adapted_zero_shot``, ``agree_propagation_zero_shot``, ``agree_on_confident`` (on the
  20% of images zero-shot is most confident about), ``marginal_entropy_change``.

The labels are read afterwards only to say, per target, whether reclip's top-1 is above
("better") or below ("worse") zero-shot's beyond the paired 95% interval, or within it
("noise"), and for the AUROC of each signal per size (targets below zero-shot in top-1 or
recall). Every candidate rule (the library's ``keeps_adapted`` at each level of ``LEVELS`` and
agreement threshold of ``THRESHOLDS``, and the alternative that tests the gain's upper bound) is
scored at every size: fall-backs on better / worse / noise targets and the mean top-1. The
chosen rule falls back least on better targets, then most on worse ones, then has the best mean.
``--borrow`` adds an earlier study at another size whose rows lack the per-image spreads, with
those of the same (target, seed) at the largest size run (marked ``sd_from_n``). Rows are
written as they come, so an interrupted study continues.
"""
from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import torch

from safetensors import safe_open

from reclip import ReCLIP, ReclipConfig, load_model
from reclip.features import extract_features
from reclip.method.heads import combine, head_logits
from reclip.method.transduce.peers import LabelPropagation
from reclip.method.safeguard import bounds, gain_per_image, keeps_adapted
from reclip.bench import load_target
from reclip.method.adapter import Adapter
from reclip.io import write_json

from dev_args import dev_parser, parse_dev_args

RESULTS = Path(__file__).parent / "results" / "safeguard_dev.json"
LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
THRESHOLDS = (0.0, 0.5, 0.55, 0.6)
GAIN_SIDES = ("lower", "upper")
SIGNALS = ("head_agreement", "estimated_gain", "agree_adapted_zero_shot", "agree_propagation_zero_shot",
           "agree_on_confident", "marginal_entropy_change")


def marginal_entropy(pred: torch.Tensor, num_classes: int) -> float:
    """Entropy (nats) of the histogram of the (N,) predicted classes."""
    p = torch.bincount(pred, minlength=num_classes).float() / len(pred)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def target_row(model, name: str, n: int, seed: int) -> dict:
    dataset = load_target(name, None, n, seed)
    dataset.transform = model.preprocess
    # both checks off, so that reclip's predictions are always the adapted ones (the signals are
    # recorded all the same); the study applies the checks afterwards. Zero-shot and label
    # propagation (the judge's posterior) come from the same run.
    run = ReCLIP(model, ReclipConfig(mode="reclip", seed=seed, safeguard=0.0, safeguard_gain=-1.0)).fit(dataset)
    zs, rc = run.zero_shot, run.predictions
    lp_pred = run.posterior.argmax(dim=-1)
    confident = zs.confidence >= zs.confidence.quantile(0.8)
    c = len(dataset.classnames)
    pred_t, pred_v = run.logits["t"].argmax(dim=-1), run.logits["v"].argmax(dim=-1)
    rows = torch.arange(len(rc.pred))
    gain_per_image = run.posterior[rows, rc.pred] - run.posterior[rows, zs.pred]
    signals = {
        "head_agreement": run.metrics["safeguard"]["agreement"],
        "chance_agreement": chance_agreement(pred_t, pred_v, c),
        "estimated_gain": run.metrics["safeguard"]["estimated_gain"],
        "estimated_gain_sd": float(gain_per_image.std()),
        "agree_adapted_zero_shot": float((rc.pred == zs.pred).float().mean()),
        "agree_propagation_zero_shot": float((lp_pred == zs.pred).float().mean()),
        "agree_on_confident": float((rc.pred == zs.pred)[confident].float().mean()),
        "marginal_entropy_change": marginal_entropy(rc.pred, c) - marginal_entropy(zs.pred, c),
    }
    z, a = zs.metrics(), rc.metrics()
    # read after the fact: the per-image difference of being right, adapted minus zero-shot
    right = (rc.pred == rc.labels).float() - (zs.pred == zs.labels).float()
    return {"target": name, "seed": seed, "n": len(rc.pred), **signals,
            "zero_shot_top1": z["top1"], "reclip_top1": a["top1"],
            "propagation_top1": float((lp_pred == rc.labels).float().mean()),
            "top1_change_sd": float(right.std()),
            "zero_shot_recall": z["mean_per_class_recall"], "reclip_recall": a["mean_per_class_recall"],
            "below_zero_shot": a["top1"] < z["top1"] or a["mean_per_class_recall"] < z["mean_per_class_recall"]}


def bench_rows(model, folder: Path, data_root: str, method: str) -> list[dict]:
    """Study rows of the finished runs of bench ``method`` (frozen V) in a ``reclip bench`` folder,
    recomputed from each run's final checkpoint (its heads, fused by the run's adapter's rule) and
    the cached frozen features: label propagation's posterior, the adapted and zero-shot
    predictions, the per-image spreads."""
    rows = []
    for path in sorted((folder / "runs").glob(f"*__{method}__s*/checkpoint/state.safetensors")):
        target, _, _, _, sample = path.parent.parent.name.split("__")
        metrics = json.loads((path.parent.parent / "metrics.json").read_text())
        dataset = load_target(target, data_root, metrics["n"], 0, int(sample[1:]))
        dataset.transform = model.preprocess
        f = extract_features(model, dataset)
        with safe_open(str(path), framework="pt") as ckpt:
            heads = {k: ckpt.get_tensor(f"head.{k}") for k in ("t_classifier", "v_classifier", "t_original")}
        config = ReclipConfig().for_model(model.contrastive, model.image_norm)
        posterior = LabelPropagation(config.propagation_settings(len(dataset.classnames)), model.device)(
            f.features, heads["t_original"]).probs
        pred = combine(*head_logits(f.features, f.features, heads["t_classifier"], heads["v_classifier"]),
                       "reclip", Adapter.load(path.parent.parent).fusion).argmax(-1)
        zero_shot = (f.features @ heads["t_original"].T).argmax(-1)
        gains = gain_per_image(posterior, pred, zero_shot)
        right = (pred == f.labels).float() - (zero_shot == f.labels).float()
        adapted = (metrics.get("final_adapted") or metrics["final"])["top1"]
        assert abs(float((pred == f.labels).float().mean()) - adapted) < 1e-6, "checkpoint and metrics disagree"
        rows.append({"target": target, "seed": int(sample[1:]), "n": len(pred), "source": str(folder),
                     "head_agreement": metrics["safeguard"]["agreement"], "estimated_gain": gains.mean().item(),
                     "estimated_gain_sd": gains.std().item(), "zero_shot_top1": metrics["zero_shot"]["top1"],
                     "reclip_top1": adapted, "top1_change_sd": right.std().item(),
                     "zero_shot_recall": metrics["zero_shot"]["mean_per_class_recall"],
                     "reclip_recall": (metrics.get("final_adapted") or metrics["final"])["mean_per_class_recall"]})
        rows[-1]["below_zero_shot"] = (rows[-1]["reclip_top1"] < rows[-1]["zero_shot_top1"]
                                       or rows[-1]["reclip_recall"] < rows[-1]["zero_shot_recall"])
    return rows


def chance_agreement(pred_t: torch.Tensor, pred_v: torch.Tensor, num_classes: int) -> float:
    """The agreement two heads with the (N,) predictions' class histograms would reach by chance."""
    p_t = torch.bincount(pred_t, minlength=num_classes).float() / len(pred_t)
    p_v = torch.bincount(pred_v, minlength=num_classes).float() / len(pred_v)
    return float((p_t * p_v).sum())


def summary(rows: list[dict]) -> dict:
    """Per size: the AUROC of every signal for the targets below zero-shot; then every candidate
    rule (``LEVELS`` x ``THRESHOLDS``) scored on all sizes, and the chosen one (``choose_rule``)."""
    sizes = sorted({r["n"] for r in rows})
    scored = {f"level={level} threshold={theta} gain={side}": {
        str(n): score([r for r in rows if r["n"] == n], level, theta, side) for n in sizes}
        for side in GAIN_SIDES for level in LEVELS for theta in THRESHOLDS}
    return {"auroc": {str(n): {s: auroc([r for r in rows if r["n"] == n], s) for s in SIGNALS} for n in sizes},
            "truth": {str(n): dict(collections.Counter(truth(r) for r in rows if r["n"] == n)) for n in sizes},
            "rules": scored, "chosen": choose_rule(scored)}


def truth(row: dict) -> str:
    """After the fact, with the labels: "better" or "worse" when reclip's top-1 differs from
    zero-shot's beyond the paired 95% interval (normal, per-image differences), else "noise"."""
    half = 1.96 * row["top1_change_sd"] / row["n"] ** 0.5
    change = row["reclip_top1"] - row["zero_shot_top1"]
    return "better" if change - half > 0 else "worse" if change + half < 0 else "noise"


def keeps(row: dict, level: float, theta: float, side: str) -> bool:
    """The library's rule on a study row (``side`` "lower"), the gain check at its default
    ``safeguard_gain``; "upper": the alternative that falls back only when the gain's upper bound
    is at most ``safeguard_gain`` (no gain beyond its noise)."""
    if side == "lower":
        return keeps_adapted(row["head_agreement"], theta, row["estimated_gain"], ReclipConfig().safeguard_gain,
                             gain_sd=row["estimated_gain_sd"], n=row["n"], level=level)
    high, low = bounds(row["head_agreement"], row["estimated_gain"], row["estimated_gain_sd"], row["n"], level)
    return high >= theta and 2 * row["estimated_gain"] - low > ReclipConfig().safeguard_gain


def score(rows: list[dict], level: float, theta: float, side: str) -> dict:
    """How the rule does on ``rows`` (one size): fall-backs by the truth, and the mean top-1."""
    kept = [keeps(r, level, theta, side) for r in rows]
    fell = collections.Counter(truth(r) for r, k in zip(rows, kept) if not k)
    return {"fell_back_better": fell["better"], "fell_back_worse": fell["worse"], "fell_back_noise": fell["noise"],
            "mean_top1": sum(r["reclip_top1"] if k else r["zero_shot_top1"] for r, k in zip(rows, kept)) / len(rows),
            "mean_top1_adapted": sum(r["reclip_top1"] for r in rows) / len(rows),
            "mean_top1_zero_shot": sum(r["zero_shot_top1"] for r in rows) / len(rows)}


def choose_rule(scored: dict) -> str:
    """The rule that, over all sizes, falls back least on targets reclip made better, then most on
    those it made worse, then has the best mean top-1 (ties: the first, LEVELS and THRESHOLDS order)."""
    def key(name: str) -> tuple:
        per = scored[name].values()
        return (-sum(p["fell_back_better"] for p in per), sum(p["fell_back_worse"] for p in per),
                round(sum(p["mean_top1"] for p in per), 6))
    return max(scored, key=key)


def auroc(rows: list[dict], signal: str) -> float | None:
    """P(signal of a target below zero-shot < signal of one that is not), ties counted half
    (None when a row lacks the signal or one group is empty)."""
    if any(signal not in r for r in rows):
        return None
    bad = [r[signal] for r in rows if r["below_zero_shot"]]
    good = [r[signal] for r in rows if not r["below_zero_shot"]]
    if not bad or not good:
        return None
    wins = sum((b < g) + 0.5 * (b == g) for b in bad for g in good)
    return round(wins / (len(bad) * len(good)), 3)


def collect(model, args) -> list[dict]:
    """Every (size, target, seed) row, the ones already in ``args.out`` kept (an interrupted study
    continues); the file is rewritten after each new row."""
    rows = json.loads(args.out.read_text())["targets"] if args.out.is_file() else []
    done = {(r["n"], r["target"], r["seed"]) for r in rows}
    for n in args.sizes:
        for name, seed in args.cells:
            if (n, name, seed) in done:
                continue
            rows.append(target_row(model, name, n, seed))
            r = rows[-1]
            print(f"{n:>5} {name:<28} {seed} top-1 {100 * r['zero_shot_top1']:5.1f} -> {100 * r['reclip_top1']:5.1f}  "
                  + "  ".join(f"{s} {r[s]:.3f}" for s in SIGNALS) + ("  BELOW" if r["below_zero_shot"] else ""),
                  flush=True)
            write_json(args.out, {"targets": rows})
    return rows


def borrowed_rows(path: Path, rows: list[dict], donor_n: int) -> list[dict]:
    """The rows of an earlier study in ``path`` (one size, no per-image spreads) for the (target,
    seed) pairs that ``rows`` hold at ``donor_n`` images, with the two standard deviations borrowed
    from those (a per-image spread does not depend on N; ``sd_from_n`` says so)."""
    donors = {(r["target"], r["seed"]): r for r in rows if r["n"] == donor_n}
    earlier = json.loads(path.read_text())
    return [{**r, "n": earlier["n"], "sd_from_n": donor_n,
             **{k: donors[r["target"], r["seed"]][k] for k in ("estimated_gain_sd", "top1_change_sd")}}
            for r in earlier["targets"] if (r["target"], r["seed"]) in donors]


def main() -> None:
    parser = dev_parser(__doc__, RESULTS)
    parser.add_argument("--sizes", type=int, nargs="*", default=[300, 1000, 2000],
                        help="images per target (each size draws its own targets; none: only --bench's rows)")
    parser.add_argument("--borrow", type=Path, help="an earlier study's JSON at another size (the 2,000-image "
                        "safeguard_dev.json), added with per-image spreads borrowed from the largest size run")
    parser.add_argument("--bench-method", default="reclip-v-frozen", help="the bench method --bench reads")
    parser.add_argument("--bench", type=Path, help="add the rows of the finished --bench-method runs of this "
                        "`reclip bench` folder (dev targets), recomputed from their checkpoints")
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    args = parse_dev_args(parser)
    start = time.perf_counter()
    model = load_model("bridge")
    rows = [r for r in collect(model, args) if "source" not in r] if args.sizes else []  # bench rows: below
    if args.bench is not None:
        rows += bench_rows(model, args.bench, args.data_root, args.bench_method)
    if args.borrow is not None:
        rows = [r for r in rows if "sd_from_n" not in r] + borrowed_rows(args.borrow, rows, max(r["n"] for r in rows))
    report = {"sizes": args.sizes, "seeds": args.seeds, "targets": rows, **summary(rows),
              "seconds": round(time.perf_counter() - start, 1)}
    write_json(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k != "targets"}, indent=1))


if __name__ == "__main__":
    main()
