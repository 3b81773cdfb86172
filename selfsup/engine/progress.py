"""What a run shows and leaves behind: MoCo-style progress lines with rate
and ETA (EpochMeters, the one set of meters of every epoch loop), and
per-epoch metrics in CSV (and TensorBoard when installed)."""

from __future__ import annotations

import csv
import datetime
import io
import os
import time
from collections.abc import Mapping, Sequence

import torch

from selfsup.core import distributed as du
from selfsup.core.errors import UserError
from selfsup.core.files import atomic_write


class AverageMeter:
    def __init__(self, name: str, fmt: str = ":f"):
        self.name, self.fmt = name, fmt
        self.reset()

    def reset(self) -> None:
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / self.count

    def __str__(self):
        return ("{name} {val" + self.fmt + "} ({avg" + self.fmt + "})").format(**self.__dict__)


class ProgressMeter:
    """Prints ``Epoch: [e][ i/n]  Time ...  Loss ...  Acc@1 ...`` plus the
    batch rate and the time left in this epoch."""

    def __init__(self, num_batches: int, meters: Sequence[AverageMeter], prefix: str = ""):
        self.num_batches, self.meters, self.prefix = num_batches, meters, prefix
        self.width = len(str(num_batches))
        self.start = time.time()

    def display(self, batch: int) -> None:
        done = batch + 1
        elapsed = time.time() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.num_batches - done) / rate if rate > 0 else 0.0
        entries = [f"{self.prefix}[{batch:>{self.width}}/{self.num_batches}]"]
        entries += [str(m) for m in self.meters]
        entries.append(f"{rate:.2f} batch/s  ETA {datetime.timedelta(seconds=int(eta))}")
        print("\t".join(entries), flush=True)


class EpochMeters:
    """The meters of one pass over a loader: Time, Data, Loss, the method's
    ``loss_*`` parts (in the order they first appear), Acc@k and any values
    shown as they are (e.g. the lr), printed as ProgressMeter lines and
    summarised as one metrics.csv row. A loop uses it as::

        meters = EpochMeters(len(loader), f"Epoch: [{epoch}]", args.print_freq)
        for i, batch in enumerate(loader):
            meters.data_loaded()
            ...                       # forward, backward, step
            meters.update(out, n)     # "loss", "logits"+"labels" (Acc@k), "loss_*" parts
            meters.batch_done(i)      # Time; a line every print_freq batches and at the last
        row = meters.summary()        # {"loss", parts, "acc1", ..., "epoch_time"}
    """

    def __init__(
        self,
        num_batches: int,
        prefix: str = "",
        print_freq: int | None = None,
        topk: Sequence[int] = (1, 5),
        data_time: bool = True,
        part_names: Mapping[str, str] | None = None,
    ):
        """print_freq None: never print (a loop that only summarises);
        data_time False: no Data column (validation); part_names: the column
        title of a ``loss_*`` key (default: the key itself)."""
        self.batch_time = AverageMeter("Time", ":6.3f")
        self.data_time = AverageMeter("Data", ":6.3f") if data_time else None
        self.loss = AverageMeter("Loss", ":.4e")
        self.parts: dict[str, AverageMeter] = {}
        self.part_names = dict(part_names or {})
        self.topk = tuple(topk)
        self.acc = [AverageMeter(f"Acc@{k}", ":6.2f") for k in self.topk]
        self.shown: dict[str, AverageMeter] = {}
        self.print_freq = print_freq
        self.progress = ProgressMeter(num_batches, [], prefix=prefix)
        self.start = self.end = time.time()

    def data_loaded(self) -> None:
        """The batch has arrived: the time since the last batch ended is Data."""
        if self.data_time is not None:
            self.data_time.update(time.time() - self.end)

    def update(self, values: Mapping, n: int) -> None:
        """Add one batch of `n` samples: values["loss"] (a number or 0-d tensor),
        every ``loss_*`` entry that is not None, and with "logits" and "labels"
        the top-k accuracies. Other entries are ignored."""
        self.loss.update(_number(values["loss"]), n)
        for key, value in values.items():
            if key.startswith("loss_") and value is not None:
                name = self.part_names.get(key, key)
                self.parts.setdefault(key, AverageMeter(name, ":.4e")).update(_number(value), n)
        if self.acc and values.get("logits") is not None:
            for meter, acc in zip(self.acc, accuracy(values["logits"], values["labels"], topk=self.topk)):
                meter.update(acc.item(), n)

    def show(self, name: str, value: float, fmt: str = ":.4f") -> None:
        """A value printed as it is (``name value (value)``) after the others."""
        meter = AverageMeter(name, fmt)
        meter.update(value)
        self.shown[name] = meter

    def batch_done(self, i: int) -> None:
        """Batch `i` is done: its Time, and its line on the main process every
        print_freq batches and at the epoch's last batch."""
        now = time.time()
        self.batch_time.update(now - self.end)
        self.end = now
        last = i == self.progress.num_batches - 1
        if self.print_freq and du.is_main_process() and (i % self.print_freq == 0 or last):
            self.display(i)

    def columns(self) -> list:
        data = [self.data_time] if self.data_time is not None else []
        return [self.batch_time, *data, self.loss, *self.parts.values(), *self.acc, *self.shown.values()]

    def display(self, i: int) -> None:
        self.progress.meters = self.columns()
        self.progress.display(i)

    def summary(self) -> dict:
        """The epoch's averages for metrics.csv: loss, each ``loss_*`` part,
        acc1/acc5/..., and epoch_time (seconds since the meters were made)."""
        row = {"loss": self.loss.avg, **{key: m.avg for key, m in self.parts.items()}}
        row.update({f"acc{k}": m.avg for k, m in zip(self.topk, self.acc)})
        row["epoch_time"] = time.time() - self.start
        return row


def _number(value) -> float:
    """A Python float of a number or a one-element tensor (a loss still
    attached to its graph included)."""
    return value.item() if torch.is_tensor(value) else float(value)


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[torch.Tensor]:
    """Top-k accuracies (percent) of logits `output` against `target`."""
    with torch.no_grad():
        maxk = min(max(topk), output.shape[1])
        _, pred = output.topk(maxk, 1, True, True)
        correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
        return [correct[: min(k, maxk)].reshape(-1).float().sum().mul_(100.0 / target.shape[0]) for k in topk]


class MetricsWriter:
    """Appends one row per epoch to `<folder>/metrics.csv` and mirrors each
    value to TensorBoard under `<folder>/tb` when tensorboard is installed.

    A resumed run appends to the same file; rows of epochs at or after the
    resume point are dropped first so the curve has no duplicates. A file
    that is not such a table (not text, rows of another width, epochs that
    are not increasing integers) is refused before the run starts, and one
    whose columns are not this run's at its first row: two runs' rows are
    never mixed in one file."""

    def __init__(self, folder: str, start_epoch: int = 0):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, "metrics.csv")
        self.header, rows = read_metrics(self.path)
        self.rows = self._keep_rows(rows, start_epoch)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(folder, "tb"))
        except Exception:  # tensorboard missing: the CSV is the record
            self.tb = None

    def _keep_rows(self, rows, start_epoch):
        """Rows of the epochs before `start_epoch`: the run being continued.
        Rows from `start_epoch` on are redone by this run (a killed run's
        epoch after its last checkpoint); said in one line, never silently.
        A run that does not continue the folder's run has moved its
        metrics.csv aside first (selfsup.engine.runstate.archive_previous_run)."""
        kept = [r for r in rows if int(r["epoch"]) < start_epoch]
        if len(kept) < len(rows):
            print(
                f"=> {self.path}: kept {len(kept)} row(s) of the epochs before {start_epoch}, redoing "
                f"{len(rows) - len(kept)} from epoch {start_epoch} on",
                flush=True,
            )
        return kept

    def _check_columns(self, row):
        """The file's columns are this run's (checked at the first row written,
        when this run's columns are known): a file of another kind of run
        (a linear evaluation's rows in a pretraining run's file) is refused."""
        if self.header is not None and set(self.header) != set(row):
            raise UserError(
                f"metrics file '{self.path}' has the columns of another kind of run ({', '.join(self.header)}); "
                f"this run writes {', '.join(row)}: give this run a folder of its own, or move the file away "
                "to start a new one"
            )
        self.header = None  # checked once: from here on the file holds this run's rows

    def write(self, epoch: int, **values) -> None:
        row = {"epoch": epoch, **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()}}
        self._check_columns(row)
        self.rows.append(row)
        fields = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        with atomic_write(self.path, "w", newline="", what="metrics file") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(self.rows)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, epoch)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


METRICS_EXPECTED = "a CSV table whose first column is 'epoch', one row per epoch (as the training scripts write it)"


def read_metrics(path: str) -> tuple[list[str] | None, list[dict]]:
    """The header and rows of a run's metrics.csv ((None, []) when there is
    none or it is empty); one UserError naming the file and what is wrong
    when it is not the table a run writes: not text, no 'epoch' column
    first, a row of another width, an epoch that is not an integer >= 0, or
    epochs that do not increase (two runs' rows one after the other)."""
    if not os.path.isfile(path):
        return None, []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            text = f.read()
        if "\0" in text:  # newer csv modules read NUL bytes as text
            raise csv.Error("it holds NUL bytes")
        reader = csv.reader(io.StringIO(text, newline=""))
        table = [(reader.line_num, cells) for cells in reader if cells]  # blank lines: no rows
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _bad_metrics(path, f"it is not a CSV text file ({exc})") from None
    if not table:
        return None, []
    header, body = table[0][1], table[1:]
    if header[0] != "epoch" or len(set(header)) != len(header) or "" in header:
        shown = ",".join(header)[:120]
        raise _bad_metrics(path, f"its header '{shown}' is not a metrics header (unique column names, 'epoch' first)")
    rows, last = [], -1
    for line, cells in body:
        if len(cells) != len(header):
            raise _bad_metrics(path, f"line {line} has {len(cells)} cells where the header has {len(header)}")
        epoch = cells[0]
        if not (epoch.isascii() and epoch.isdigit()):
            raise _bad_metrics(path, f"line {line}: epoch {epoch[:40]!r} is not an integer >= 0")
        if int(epoch) <= last:
            raise _bad_metrics(path, f"line {line}: epoch {epoch} does not follow epoch {last} (rows of two runs?)")
        last = int(epoch)
        rows.append(dict(zip(header, cells)))
    return header, rows


def _bad_metrics(path, what):
    return UserError(
        f"metrics file '{path}': {what}; expected {METRICS_EXPECTED}: move it away (checkpoints do not need it) "
        "and rerun"
    )
