"""Leave-one-source-out, teacher side: the Lite2@160 head refitted without one source's training photos,
scored on that source's validation photos (features from the r38 teacher cache; same split).

Run from the repo root after r38's teacher labelling: `.venv/bin/python docs/train_runs/teacher-probe/loso_teacher.py .cache/teacher-<key>.pt`."""
import json, sys, torch
from training.config import parse_config
from training.train import scan_recipe_data, split_samples
from training.data import load_cached
from training.teacher import fit_head

def main():
    cfg, _ = parse_config(["--config", "training/configs/distill-patient.yaml"])
    samples, labels, root = scan_recipe_data(cfg)
    train_s, val_s = split_samples(samples, cfg)
    _, train_y, train_kept, _ = load_cached(train_s, cfg.cache_size, cfg.cache_size, 40_000_000, 2)
    _, val_y, val_kept, _ = load_cached(val_s, cfg.resize_size, cfg.input_size, 40_000_000, 2)
    tsrc = [train_s[i].source for i in train_kept.tolist()]
    vsrc = [val_s[i].source for i in val_kept.tolist()]
    blob = torch.load(sys.argv[1], weights_only=True)
    tf, vf = blob["train_features"], blob["val_features"]
    n, k, d = tf.shape
    assert n == len(tsrc)
    out = {}
    for left in ["none", "kaggle", "sasyl_fastfood", "vishalpatel_hotdog"]:
        keep = torch.tensor([s != left for s in tsrc])
        f = tf[keep].reshape(-1, d); y = train_y[keep].repeat_interleave(k)
        head = fit_head(f, y, 2, 1e-2)
        with torch.no_grad():
            hit = head(vf).argmax(1) == val_y
        row = {s: round(hit[torch.tensor([v == s for v in vsrc])].float().mean().item(), 4) for s in sorted(set(vsrc))}
        out[left] = row
        print(left, json.dumps(row), flush=True)
    json.dump(out, open("docs/train_runs/teacher-probe/loso_teacher.json", "w"), indent=1)

if __name__ == "__main__":
    main()
