"""r38: per-class accuracy per source with and without the training prior undone (logit adjustment: the hot-dog
logit raised by log-odds of the training visits). Run from the repo root: `.venv/bin/python docs/train_runs/r38-patient-lite2/prior_check.py weights`.
Output: per source [accuracy, hot dog recall, not-hot-dog recall, n] (prior_check.txt). test/ is read to report, never to choose."""
import json, math, sys, torch
from pathlib import Path
from training.compare import run_files, per_image_loss
from training.train import epoch_sample_order
torch.set_num_threads(1)
run = Path(sys.argv[1])
rows = run_files(run)
train = [(p, s) for sp, p, s in rows if sp == "train"]
labels = torch.tensor([0 if p.parent.name == "hot_dog" else 1 for p, _ in train])
cfg = __import__("yaml").safe_load((run / "config.yaml").read_text())
order = epoch_sample_order([s for _, s in train], cfg.get("source_repeats", {}), torch.Generator().manual_seed(0))
hd = (labels[order] == 0).float().mean().item()
shift = math.log(0.5 / hd) - math.log(0.5 / (1 - hd))   # add to hot-dog logit minus not-hot-dog logit
print("training visits hot dog share", round(hd, 3), "logit shift", round(shift, 3))
val = [(p, s) for sp, p, s in rows if sp == "val"]
test = sorted(Path("../shared/data/hotdog/test").rglob("*.jpg"))
for name, files, srcs in [("val", [p for p, _ in val], [s for _, s in val]), ("test", test, ["test"] * len(test))]:
    _, probs, lab = per_image_loss(run, files)
    y = torch.tensor([lab.index(f.parent.name) for f in files])
    logit = torch.log(probs[:, 0].clamp_min(1e-9)) - torch.log(probs[:, 1].clamp_min(1e-9))
    for sh in (0.0, shift):
        pred = torch.where(logit + sh > 0, 0, 1)
        out = {}
        for src in sorted(set(srcs)) + ["all"]:
            m = torch.tensor([src in ("all", s) for s in srcs])
            r = [((pred == y) & m & (y == c)).sum().item() / max(1, (m & (y == c)).sum().item()) for c in (0, 1)]
            out[src] = (round(((pred == y) & m).sum().item() / m.sum().item(), 3), round(r[0], 3), round(r[1], 3), int(m.sum()))
        print(name, "shift", round(sh, 2), json.dumps(out))
