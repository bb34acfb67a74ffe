"""The PyTorch reference point of the performance issue: a CoMatch train step in PyTorch.

WideResNet-28-2 as in the CoMatch/FixMatch papers (pre-activation blocks, leaky ReLU 0.1,
BatchNorm momentum 0.001 in PyTorch terms, a 2-layer projection head to 64 dims), the CoMatch
loss of Li et al. 2021 (supervised CE, distribution alignment, memory-smoothed pseudo-labels,
pseudo-label graph, embedding graph contrastive loss, masked CE on a strong view, queue
update), SGD with Nesterov momentum and an EMA of the weights. Written for this benchmark
from the paper's equations (not the official code); like the official train step it takes
ready-made views (synthetic tensors), so it does no augmentation: it is the "bare step".

Run it in a separate environment with torch installed (no JAX needed):

  python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch
  taskset -c 0,1 /tmp/torchvenv/bin/python experiments/torch_cpu_step.py --batch_size=8 --mu=7

and compare with `python experiments/benchmark.py --preset=cifar10_40 --batch_size=8 --mu=7`.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride, activate_before_residual):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x):
        if self.shortcut is None:
            conv_input, residual = F.leaky_relu(self.bn1(x), 0.1), x
        elif self.activate_before_residual:
            conv_input = F.leaky_relu(self.bn1(x), 0.1)
            residual = self.shortcut(conv_input)
        else:
            conv_input, residual = x, self.shortcut(x)
        y = self.conv2(F.leaky_relu(self.bn2(self.conv1(conv_input)), 0.1))
        return y + residual


class WideResNet(nn.Module):
    def __init__(self, num_classes=10, depth=28, widen=2, low_dim=64):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        blocks = []
        for g, stride in enumerate((1, 2, 2)):
            for b in range(n):
                blocks.append(
                    Block(
                        widths[g] if b == 0 else widths[g + 1],
                        widths[g + 1],
                        stride if b == 0 else 1,
                        activate_before_residual=(g == 0 and b == 0),
                    )
                )
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[-1], momentum=0.001)
        self.classifier = nn.Linear(widths[-1], num_classes)
        self.head = nn.Sequential(
            nn.Linear(widths[-1], widths[-1]), nn.LeakyReLU(0.1), nn.Linear(widths[-1], low_dim)
        )

    def forward(self, x):
        x = F.leaky_relu(self.bn(self.blocks(self.stem(x))), 0.1)
        features = x.mean(dim=(2, 3))
        return self.classifier(features), F.normalize(self.head(features), dim=1)


def comatch_loss(model, state, x_labeled, labels, x_weak, x_strong0, x_strong1, args):
    b = x_labeled.shape[0]
    logits, z = model(torch.cat([x_labeled, x_weak, x_strong0, x_strong1]))
    u = x_weak.shape[0]
    logits_x = logits[:b]
    logits_w, logits_s0 = logits[b : b + u], logits[b + u : b + 2 * u]
    z_w, z_s0, z_s1 = z[b : b + u], z[b + u : b + 2 * u], z[b + 2 * u :]
    loss_x = F.cross_entropy(logits_x, labels)
    with torch.no_grad():
        probs = F.softmax(logits_w, dim=1)
        # distribution alignment over the last 32 batches' mean prediction
        state["da"] = torch.cat([state["da"][1:], probs.mean(0, keepdim=True)])
        probs = probs / state["da"].mean(0)
        probs = probs / probs.sum(1, keepdim=True)
        probs_orig = probs.clone()
        if state["step"] > 0:  # memory-smoothed pseudo-labels
            a = F.softmax(z_w.detach() @ state["queue_z"].T / args.temperature, dim=1)
            probs = args.alpha * probs + (1 - args.alpha) * a @ state["queue_p"]
        scores, pseudo = probs.max(1)
        mask = (scores >= args.threshold).float()
        # queue update: weak unlabeled (unsmoothed) + labeled one-hot
        feats = torch.cat([z_w.detach(), z[:b].detach()])
        onehot = F.one_hot(labels, probs.shape[1]).float()
        entries = torch.cat([probs_orig, onehot])
        n = feats.shape[0]
        ptr = state["ptr"]
        idx = (torch.arange(n) + ptr) % args.queue_size
        state["queue_z"][idx] = feats
        state["queue_p"][idx] = entries
        state["ptr"] = (ptr + n) % args.queue_size
        # pseudo-label graph
        q = probs @ probs.T
        q.fill_diagonal_(1)
        q = q * (q >= args.contrast_threshold).float()
        q = q / q.sum(1, keepdim=True)
    sim = torch.exp(z_s0 @ z_s1.T / args.temperature)
    sim = sim / sim.sum(1, keepdim=True)
    loss_ctr = -(torch.log(sim + 1e-7) * q).sum(1).mean()
    loss_u = (F.cross_entropy(logits_s0, pseudo, reduction="none") * mask).mean()
    return loss_x + loss_u + loss_ctr


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--mu", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--json_out", default="")
    args = parser.parse_args()
    args.temperature, args.alpha, args.threshold = 0.2, 0.9, 0.95
    args.contrast_threshold, args.queue_size = 0.8, 2560
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = WideResNet()
    ema = WideResNet()
    ema.load_state_dict(model.state_dict())
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if "bn" in name or "bias" in name else decay).append(p)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
        lr=0.03,
        momentum=0.9,
        nesterov=True,
    )
    b, u = args.batch_size, args.batch_size * args.mu
    image = lambda n: torch.randn(n, 3, 32, 32).contiguous(memory_format=memory_format)
    batch = (image(b), torch.arange(b) % 10, image(u), image(u), image(u))
    state = {
        "da": torch.full((32, 10), 0.1),
        "queue_z": torch.zeros(args.queue_size, 64),
        "queue_p": torch.zeros(args.queue_size, 10),
        "ptr": 0,
        "step": 0,
    }

    def step():
        loss = comatch_loss(model, state, *batch, args)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.mul_(0.999).add_(p.detach(), alpha=0.001)
            for be, bm in zip(ema.buffers(), model.buffers()):
                be.copy_(bm)
        state["step"] += 1
        return loss.item()

    step()
    step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    images = b + 3 * u
    figures = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "channels_last": args.channels_last,
        "images_per_step": images,
        "bare_step_s": seconds,
        "bare_step_images_per_s": images / seconds,
    }
    for key, value in figures.items():
        print(f"{key:24s} {value:.4g}" if isinstance(value, float) else f"{key:24s} {value}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
