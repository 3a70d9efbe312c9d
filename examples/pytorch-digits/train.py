"""Train a small CNN on the 8x8 digits with PyTorch: an ffdl example learner.

Run with Debian's interpreter (its python3-torch imports only there):

    DATA_DIR=/tmp/digits RESULT_DIR=/tmp/r CHECKPOINT_DIR=/tmp/c \\
        /usr/bin/python3 train.py [--epochs 8] [--lr 0.05] [--batch-size 32] [--seed 0]

The data comes from examples/prepare_digits.py: $DATA_DIR/train.npz and
$DATA_DIR/test.npz, each with x float32 (n, 8, 8) and y int64.

Environment:
    DATA_DIR        where train.npz and test.npz are (required)
    RESULT_DIR      where model.pt and metrics.json go (rank 0 only)
    CHECKPOINT_DIR  checkpoint.pt is written here after every epoch (rank 0
                    only); when one is there at start, training resumes from
                    it. Only rank 0 reads it and sends it to the other ranks.
    LOG_DIR         optional; each rank also appends its log lines to
                    LOG_DIR/train-rank<RANK>.log
    WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT
                    when WORLD_SIZE > 1, train data-parallel over
                    torch.distributed (gloo, env://) with one process per rank

Every rank prints, per epoch and at the end (the platform parses these):

    epoch 3 loss 0.1234 accuracy 0.9611
    final test accuracy 0.9722

where loss is the mean training loss of the epoch over all ranks and accuracy
is the test accuracy after that epoch.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

CHECKPOINT_NAME = "checkpoint.pt"
_log_file = None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a small CNN on the digits.")
    parser.add_argument("--epochs", type=int, default=8, help="total epochs to train (default 8)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size per rank (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser.parse_args(argv)


def log(message):
    """Print one line to stdout, flushed, and copy it to the log file if any."""
    print(message, flush=True)
    if _log_file is not None:
        _log_file.write(message + "\n")
        _log_file.flush()


def open_log_file(rank):
    global _log_file
    log_dir = os.environ.get("LOG_DIR")
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        _log_file = open(os.path.join(log_dir, f"train-rank{rank}.log"), "a")


def setup_distributed():
    """Join the process group when WORLD_SIZE > 1; return (rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1:
        dist.init_process_group(backend="gloo", init_method="env://",
                                rank=rank, world_size=world_size)
    # The model is tiny: more threads buy nothing, and several spinning
    # threads per process make things much slower when the cores are shared.
    torch.set_num_threads(1)
    return rank, world_size


def load_split(data_dir, name):
    with np.load(os.path.join(data_dir, f"{name}.npz")) as data:
        x = torch.from_numpy(data["x"]).unsqueeze(1)  # (n, 1, 8, 8)
        y = torch.from_numpy(data["y"])
    return TensorDataset(x, y)


class DigitsNet(nn.Module):
    """Two 3x3 convolutions, one 2x2 max pool, two dense layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def load_checkpoint(checkpoint_dir, rank, world_size):
    """Rank 0 reads the checkpoint, if there is one, and sends it to the others
    (so the checkpoint directory need not be shared); returns it or None."""
    state = None
    path = os.path.join(checkpoint_dir, CHECKPOINT_NAME) if checkpoint_dir else None
    if rank == 0 and path and os.path.exists(path):
        state = torch.load(path, map_location="cpu")
    if world_size > 1:
        box = [state]
        dist.broadcast_object_list(box, src=0)
        state = box[0]
    return state


def restore(state, model, optimizer):
    """Apply a checkpoint; return the number of epochs it had completed."""
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"])


def save_checkpoint(checkpoint_dir, model, optimizer, epoch):
    """Write the checkpoint atomically: a crash mid-write keeps the old one."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    path = os.path.join(checkpoint_dir, CHECKPOINT_NAME)
    tmp = path + ".tmp"
    torch.save({"epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict()}, tmp)
    os.replace(tmp, path)


def pick_device(world_size):
    """A GPU when the platform gave this learner one (CUDA_VISIBLE_DEVICES) and
    torch can use it; distributed runs stay on CPU, where gloo works."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if world_size == 1 and visible and torch.cuda.is_available():
        return torch.device("cuda:0")
    return torch.device("cpu")


def train_one_epoch(model, loader, optimizer, world_size, device):
    """One pass over this rank's shard; return the mean loss over all ranks."""
    model.train()
    total = torch.zeros(2, dtype=torch.float64)  # loss sum, sample count
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64)
    if world_size > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


@torch.no_grad()
def evaluate(model, dataset, device):
    """Test accuracy over the whole test set (it is small; every rank does it)."""
    model.eval()
    x, y = (t.to(device) for t in dataset.tensors)
    predictions = model(x).argmax(dim=1)
    return (predictions == y).double().mean().item()


def write_results(result_dir, model, accuracy, loss, args, world_size, seconds):
    os.makedirs(result_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(result_dir, "model.pt"))
    metrics = {
        "framework": "pytorch",
        "final_test_accuracy": round(accuracy, 4),
        "final_train_loss": None if loss is None else round(loss, 4),
        "epochs": args.epochs,
        "world_size": world_size,
        "train_seconds": round(seconds, 2),
    }
    with open(os.path.join(result_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")


def main(argv=None):
    args = parse_args(argv)
    rank, world_size = setup_distributed()
    open_log_file(rank)
    data_dir = os.environ.get("DATA_DIR")
    if not data_dir:
        sys.exit("train.py: DATA_DIR is not set")
    result_dir = os.environ.get("RESULT_DIR")
    checkpoint_dir = os.environ.get("CHECKPOINT_DIR")
    started = time.monotonic()

    torch.manual_seed(args.seed)
    train_set = load_split(data_dir, "train")
    test_set = load_split(data_dir, "test")
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank,
                                 shuffle=True, seed=args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    log(f"rank {rank} of {world_size}: {len(train_set)} train, {len(test_set)} test, "
        f"{len(sampler)} samples per epoch on this rank")

    device = pick_device(world_size)
    log(f"device {device.type}")
    net = DigitsNet().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    start_epoch = restore(load_checkpoint(checkpoint_dir, rank, world_size), net, optimizer)
    if start_epoch > 0:
        log(f"resuming from epoch {start_epoch}")
    # DDP copies rank 0's parameters to the other ranks when it wraps the model.
    model = DistributedDataParallel(net) if world_size > 1 else net

    loss = None
    for epoch in range(start_epoch + 1, args.epochs + 1):
        sampler.set_epoch(epoch)
        loss = train_one_epoch(model, loader, optimizer, world_size, device)
        accuracy = evaluate(net, test_set, device)
        log(f"epoch {epoch} loss {loss:.4f} accuracy {accuracy:.4f}")
        if rank == 0 and checkpoint_dir:
            save_checkpoint(checkpoint_dir, net, optimizer, epoch)

    accuracy = evaluate(net, test_set, device)
    log(f"final test accuracy {accuracy:.4f}")
    if rank == 0 and result_dir:
        write_results(result_dir, net, accuracy, loss, args, world_size,
                      time.monotonic() - started)
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
