"""Progress output for a run: a rich bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def format_row(row: dict[str, float], epochs: int) -> str:
    return (
        f"epoch {int(row['epoch'])}/{epochs}  "
        f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
        f"test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%  "
        f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {row['time_s']:.1f}s"
    )


class ConsoleReporter:
    """Implements bnlab.train.loop.Reporter for the CLI."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stdout)
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        self.epochs = 0

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs
        if not self.live:
            return
        self.progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps)

    def step(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def epoch_end(self, row: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.console.print(format_row(row, self.epochs), highlight=False, soft_wrap=True)


class LineReporter:
    """Plain, prefixed lines only: safe when several sweep jobs share one terminal."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.epochs = 0

    def line(self, text: str) -> None:
        print(f"[{self.prefix}] {text}", flush=True)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs

    def step(self) -> None:
        pass

    def epoch_end(self, row: dict[str, float]) -> None:
        self.line(format_row(row, self.epochs))
