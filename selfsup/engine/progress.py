"""What a run shows and leaves behind: MoCo-style progress lines with rate
and ETA, and per-epoch metrics in CSV (and TensorBoard when installed)."""
import csv
import datetime
import os
import time

import torch


class AverageMeter:
    def __init__(self, name, fmt=":f"):
        self.name, self.fmt = name, fmt
        self.reset()

    def reset(self):
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / self.count

    def __str__(self):
        return ("{name} {val" + self.fmt + "} ({avg" + self.fmt + "})").format(**self.__dict__)


class ProgressMeter:
    """Prints ``Epoch: [e][ i/n]  Time ...  Loss ...  Acc@1 ...`` plus the
    batch rate and the time left in this epoch."""

    def __init__(self, num_batches, meters, prefix=""):
        self.num_batches, self.meters, self.prefix = num_batches, meters, prefix
        self.width = len(str(num_batches))
        self.start = time.time()

    def display(self, batch):
        done = batch + 1
        elapsed = time.time() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.num_batches - done) / rate if rate > 0 else 0.0
        entries = [f"{self.prefix}[{batch:>{self.width}}/{self.num_batches}]"]
        entries += [str(m) for m in self.meters]
        entries.append(f"{rate:.2f} batch/s  ETA {datetime.timedelta(seconds=int(eta))}")
        print("\t".join(entries), flush=True)


def accuracy(output, target, topk=(1,)):
    """Top-k accuracies (percent) of logits `output` against `target`."""
    with torch.no_grad():
        maxk = min(max(topk), output.shape[1])
        _, pred = output.topk(maxk, 1, True, True)
        correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
        return [correct[:min(k, maxk)].reshape(-1).float().sum().mul_(100.0 / target.shape[0]) for k in topk]


class MetricsWriter:
    """Appends one row per epoch to `<folder>/metrics.csv` and mirrors each
    value to TensorBoard under `<folder>/tb` when tensorboard is installed.

    A resumed run appends to the same file; rows of epochs at or after the
    resume point are dropped first so the curve has no duplicates."""

    def __init__(self, folder, start_epoch=0):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, "metrics.csv")
        self.rows = self._read_rows(start_epoch)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(folder, "tb"))
        except Exception:  # tensorboard missing: the CSV is the record
            self.tb = None

    def _read_rows(self, start_epoch):
        """Rows of the epochs before `start_epoch`: the run being continued.
        Rows from `start_epoch` on are redone by this run (a killed run's
        epoch after its last checkpoint); said in one line, never silently.
        A run that does not continue the folder's run has moved its
        metrics.csv aside first (selfsup.engine.runstate.archive_previous_run)."""
        if not os.path.isfile(self.path):
            return []
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if int(r["epoch"]) < start_epoch]
        if len(kept) < len(rows):
            print(f"=> {self.path}: kept {len(kept)} row(s) of the epochs before {start_epoch}, redoing "
                  f"{len(rows) - len(kept)} from epoch {start_epoch} on", flush=True)
        return kept

    def write(self, epoch, **values):
        row = {"epoch": epoch, **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()}}
        self.rows.append(row)
        fields = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        tmp = f"{self.path}.tmp{os.getpid()}"  # a writer killed here leaves a file the next save removes
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, epoch)
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()
