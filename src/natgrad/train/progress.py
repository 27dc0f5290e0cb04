"""Progress reporting: a tqdm bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """Shows steps/s, ETA and the current loss; silent when ``enabled`` is False."""

    def __init__(self, total: int, start: int, enabled: bool, description: str) -> None:
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.total = total
        self.description = description
        self.started = time.perf_counter()
        self.start_step = start
        self.latest: dict[str, str] = {}
        self.bar = (
            tqdm(total=total, initial=start, desc=description, dynamic_ncols=True, leave=False)
            if self.interactive
            else None
        )

    def advance(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0:
                self.latest["loss"] = f"{loss:.4g}"
                self.bar.set_postfix(self.latest, refresh=False)

    def log_eval(self, step: int, metrics: dict) -> None:
        """Show the latest validation figures: on the bar, or as one log line."""
        validation = {
            key: f"{value:.4g}"
            for key, value in metrics.items()
            if key.startswith("val_") and isinstance(value, float)
        }
        self.latest.update(validation)
        if self.bar is not None:
            self.bar.set_postfix(self.latest, refresh=False)
        if not self.enabled or self.bar is not None:
            return
        elapsed = time.perf_counter() - self.started
        done = max(step - self.start_step, 1)
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        shown = " ".join(
            f"{key}={value:.4g}" for key, value in metrics.items() if isinstance(value, float)
        )
        print(
            f"[{self.description}] step {step}/{self.total} {rate:.1f} steps/s "
            f"eta {eta:.0f}s {shown}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
