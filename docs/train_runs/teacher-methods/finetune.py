"""Exploration: fine-tune Lite0 (LP-FT) and report val per source each epoch. Not product code."""
import sys, time, math
import torch, torch.nn.functional as F
from pathlib import Path
from training.config import parse_config
from training.data import load_cached, scan_image_folder
from training.train import split_samples, epoch_sample_order
from training.presets import TrainAugment
from training.teacher import load_pretrained_lite0, TEACHER_SPEC_FIELDS, features_and_imagenet_logits, fit_head, teacher_input
from model_src.preprocess import PreprocessSpec

def main():
    mode, epochs, lr, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    repeats = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    cfg, _ = parse_config(["--config", "training/configs/distill.yaml"])
    samples, labels = scan_image_folder(Path(cfg.data), None, cfg.source_patterns, cfg.default_source)
    train_s, val_s = split_samples(samples, cfg)
    sspec = PreprocessSpec(labels=labels, input_size=cfg.input_size, resize_size=cfg.resize_size)
    train_x, train_y, kept, _ = load_cached(train_s, cfg.cache_size, cfg.cache_size, sspec.max_pixels, 2)
    val_x, val_y, vkept, _ = load_cached(val_s, sspec.resize_size, sspec.input_size, sspec.max_pixels, 2)
    vsrc = [val_s[i].source for i in vkept.tolist()]
    tspec = PreprocessSpec(labels=labels, input_size=size, resize_size=size, **TEACHER_SPEC_FIELDS)
    aug = TrainAugment(tspec, scale=(cfg.crop_scale_min, 1.0), jitter=0.3, erasing=0.25)
    order = epoch_sample_order([train_s[i].source for i in kept.tolist()], {"kaggle": repeats})
    clock = lambda: time.process_time() / torch.get_num_threads()
    t0 = clock()
    m = load_pretrained_lite0()
    # LP: linear head on features of 1 center view (cheap init); training runs contiguous (channels_last
    # backward crashes on this CPU).
    f, _ = features_and_imagenet_logits(m, train_x, size, autocast=torch.autocast("cpu", torch.bfloat16))
    m = m.to(memory_format=torch.contiguous_format)
    head = fit_head(f, train_y, 2, 1e-3)
    m.reset_classifier(2); m.get_classifier().load_state_dict(head.state_dict())
    print(f"LP done {clock()-t0:.0f}s", flush=True)
    k = None if mode == "full" else int(mode.removeprefix("blocks"))
    if k is None:
        trainable = list(m.parameters()); frozen = None
    else:
        frozen = torch.nn.Sequential(m.conv_stem, m.bn1, *m.blocks[:k])
        for p in frozen.parameters(): p.requires_grad_(False)
        trainable = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in trainable if p.ndim > 1], "weight_decay": 0.05},
                             {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}], lr=lr)
    bs = 64; steps = len(order) // bs; total = steps * epochs
    ac = torch.autocast("cpu", torch.bfloat16)
    def evaluate():
        m.eval()
        with torch.no_grad(), ac:
            x = F.interpolate(val_x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            logits = torch.cat([m(teacher_input(x[i:i+128])).float() for i in range(0, len(x), 128)])
        loss = F.cross_entropy(logits, val_y, reduction="none"); hit = logits.argmax(1) == val_y
        out = {}
        for s in sorted(set(vsrc)):
            mk = torch.tensor([v == s for v in vsrc]); out[f"{s}_loss"] = round(loss[mk].mean().item(), 4); out[f"{s}_acc"] = round(hit[mk].float().mean().item(), 4)
        return out
    print("epoch 0", evaluate(), flush=True)
    step = 0
    for ep in range(epochs):
        m.train()
        if frozen is not None: frozen.eval()
        g = torch.Generator().manual_seed(ep)
        perm = order[torch.randperm(len(order), generator=g)]
        for s in range(steps):
            idx = perm[s*bs:(s+1)*bs]
            x = aug(train_x[idx], size, g); y = train_y[idx]
            for gr in opt.param_groups: gr["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total)) * min(1, step / (0.05 * total + 1))
            with ac:
                if frozen is not None:
                    with torch.no_grad(): x = frozen(x)
                    h = x
                    for b in m.blocks[k:]: h = b(h)
                    logits = m.forward_head(m.bn2(m.conv_head(h)))
                else:
                    logits = m(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
            opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(trainable, 2.0); opt.step(); step += 1
        print(f"epoch {ep+1} cpu_s {clock()-t0:.0f}", evaluate(), flush=True)

if __name__ == '__main__':
    main()
