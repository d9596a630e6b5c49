"""Per-class recall on the left-out source for the three leave-one-source-out runs, which predate
`val_recall_*` in metrics.jsonl and the manifest. Student: its chosen checkpoint on the left-out val photos.
Teacher: its head refitted exactly as Teacher.build does, from the run's cached Lite2 features (checked: the
refit reproduces the manifest's teacher accuracy). Run from the repo root after `make loso`:
`.venv/bin/python docs/train_runs/loso_recall.py runs/loso-*` -> docs/train_runs/loso_recall.txt."""
import json, sys, torch, yaml
from pathlib import Path
from types import SimpleNamespace
from training.compare import run_files, per_image_loss
from training.data import recall_per_class, source_mask
from training.teacher import fit_chosen_head, teacher_cache_path
torch.set_num_threads(1)
for run in map(Path, sys.argv[1:]):
    cfg, manifest = yaml.safe_load((run / "config.yaml").read_text()), json.loads((run / "manifest.json").read_text())
    left_out, rows = cfg["exclude_source"], run_files(run)
    val = [(p, s) for split, p, s in rows if split == "val"]
    held_out = [p for p, s in val if s == left_out]
    _, probs, labels = per_image_loss(run, held_out)
    held_y = torch.tensor([labels.index(p.parent.name) for p in held_out])
    student_hits = probs.argmax(1) == held_y
    student = recall_per_class(student_hits, held_y, labels, torch.ones(len(held_out), dtype=torch.bool))
    val_y = torch.tensor([labels.index(p.parent.name) for p, _ in val])
    val_sources = [s for _, s in val]
    mask = source_mask(val_sources, left_out)
    blob = torch.load(teacher_cache_path(manifest["data_files_sha256"], SimpleNamespace(**cfg)), weights_only=True)
    train_y = torch.tensor([labels.index(p.parent.name) for split, p, _ in rows if split == "train"])
    select = source_mask(val_sources, cfg["select_source"], left_out)
    *_, head = fit_chosen_head(blob["train_features"], train_y, blob["val_features"][select], val_y[select], cfg["seed"])
    with torch.no_grad():
        teacher_hits = head(blob["val_features"]).argmax(1) == val_y
    teacher_acc = teacher_hits[mask].float().mean().item()
    assert abs(teacher_acc - manifest[f"teacher_val_acc_{left_out}"]) < 1e-4, (teacher_acc, manifest)
    counts = {name: int((mask & (val_y == c)).sum()) for c, name in enumerate(labels)}
    print(f"{left_out}: val photos {counts}; student acc {student_hits.float().mean():.3f} "
          f"recall {({c: round(v, 3) for c, v in student.items()})}; teacher acc {teacher_acc:.3f} recall "
          f"{({c: round(v, 3) for c, v in recall_per_class(teacher_hits, val_y, labels, mask).items()})}")
