"""``beam-zdl report``: one self-contained HTML file charting a run's batches.

The input is the progress history a checkpoint directory keeps (the last
``--retain_batches`` :class:`~beam_zdl.BatchProgress` records, see
:mod:`beam_zdl.progress_history`). The file holds:

* four charts, drawn with matplotlib and embedded as base64 PNG (no script, no
  network needed to open the file): input and processed rows per second, batch
  duration stacked by Step, records per batch, and lag per partition — each with
  one point (or bar) per batch;
* the slowest batches, the replays, and every batch in a table (one row each);
* the records as JSON in a ``<script type="application/json" id="batches">``
  element, for tools.

Damaged progress records are listed and skipped. Matplotlib is the optional extra
``report`` (``pip install 'beam_zdl[report]'``).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from beam_zdl.batch_progress import BatchProgress
from beam_zdl.errors import ZdlError
from beam_zdl.progress_history import read_history

__all__ = ["write_report", "render_report", "STEPS"]

_LOGGER = logging.getLogger(__name__)

STEPS = ("plan", "run", "complete", "commit")
_SLOWEST = 10
_MAX_PARTITION_LINES = 12


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ZdlError("beam-zdl report draws its charts with matplotlib, which is not "
                       "installed: pip install 'beam_zdl[report]' (or pip install "
                       "matplotlib)") from None
    matplotlib.use("Agg")  # no display: draw into PNG bytes
    import matplotlib.pyplot as plt
    return plt


def _figure(progress: Sequence[BatchProgress]) -> Any:
    """The four charts in one figure (2 x 2), one point or bar per batch."""
    plt = _pyplot()
    ids = [p.batch_id for p in progress]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), constrained_layout=True)
    ax = axes[0][0]
    ax.plot(ids, [p.input_rows_per_s for p in progress], marker="o", label="input rows/s")
    ax.plot(ids, [p.processed_rows_per_s for p in progress], marker="s",
            label="processed rows/s")
    ax.set_title("Rows per second")
    ax.set_xlabel("batch")
    ax.legend()
    ax = axes[0][1]
    bottom = [0.0] * len(progress)
    for step in STEPS:
        values = [p.durations_s.get(step, 0.0) for p in progress]
        ax.bar(ids, values, bottom=bottom, label=step)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_title("Batch duration by step (s)")
    ax.set_xlabel("batch")
    ax.legend()
    ax = axes[1][0]
    ax.bar(ids, [p.records for p in progress],
           color=["tab:purple" if p.replay else "tab:green" for p in progress])
    ax.set_title("Records per batch" + (" (replays in purple)"
                                        if any(p.replay for p in progress) else ""))
    ax.set_xlabel("batch")
    ax = axes[1][1]
    series: dict[str, list[tuple[int, int]]] = {}
    for p in progress:
        for part in p.partitions:
            if part.lag is not None:
                series.setdefault(f"{part.topic}[{part.partition}]", []).append(
                    (p.batch_id, part.lag))
    worst = sorted(series, key=lambda k: -max(v for _, v in series[k]))[:_MAX_PARTITION_LINES]
    for name in sorted(worst):
        points = series[name]
        ax.plot([b for b, _ in points], [v for _, v in points], marker=".", label=name)
    ax.set_title("Lag per partition after each batch (offsets)" +
                 (f", {_MAX_PARTITION_LINES} furthest behind" if len(series) > len(worst)
                  else ""))
    ax.set_xlabel("batch")
    if worst:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no end offsets known", ha="center", transform=ax.transAxes)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _ms(ms: int) -> str:
    stamp = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _rows(progress: Sequence[BatchProgress]) -> str:
    cells = []
    for p in progress:
        d = p.durations_s
        values = [str(p.batch_id), _ms(p.trigger_ms), str(p.records), str(p.bytes),
                  f"{p.input_rows_per_s:.0f}", f"{p.processed_rows_per_s:.0f}",
                  *(f"{d.get(k, 0.0):.3f}" for k in (*STEPS, "total")),
                  "-" if p.lag is None else str(p.lag), str(p.dead_letter_records),
                  str(p.data_loss_records), "yes" if p.replay else ""]
        cells.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>")
    return "\n".join(cells)


_HEAD = ("<tr><th>batch</th><th>triggered</th><th>records</th><th>bytes</th>"
         "<th>input rows/s</th><th>processed rows/s</th><th>plan s</th><th>run s</th>"
         "<th>complete s</th><th>commit s</th><th>total s</th><th>lag</th>"
         "<th>dead letters</th><th>lost</th><th>replay</th></tr>")


def render_report(checkpoint_dir: str, progress: Sequence[BatchProgress],
                  damaged: Sequence[str] = ()) -> tuple[str, Optional[bytes]]:
    """The report's HTML and its charts' PNG (None when there are no batches)."""
    png = _png(_figure(progress)) if progress else None
    slowest = sorted(progress, key=lambda p: -p.durations_s.get("total", 0.0))[:_SLOWEST]
    replays = [p for p in progress if p.replay]
    records = sum(p.records for p in progress)
    title = f"beam_zdl run report: {checkpoint_dir}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(progress)} batches"
        + (f" ({progress[0].batch_id}..{progress[-1].batch_id})" if progress else "")
        + f", {records} records, {len(replays)} replayed. Generated "
        f"{html.escape(_ms(int(datetime.datetime.now().timestamp() * 1000)))}.</p>",
    ]
    if png is not None:
        parts.append('<img id="charts" alt="rows per second, batch duration by step, records '
                     'per batch, lag per partition" src="data:image/png;base64,'
                     + base64.b64encode(png).decode() + '">')
    else:
        parts.append("<p>No progress records in this checkpoint yet.</p>")
    if damaged:
        parts.append("<h2>Damaged progress records (skipped)</h2><ul>"
                     + "".join(f"<li>{html.escape(d)}</li>" for d in damaged) + "</ul>")
    parts.append(f"<h2>Slowest batches</h2><table id=\"slowest\">{_HEAD}{_rows(slowest)}</table>")
    parts.append("<h2>Replays</h2>" + (f"<table id=\"replays\">{_HEAD}{_rows(replays)}</table>"
                                        if replays else "<p>None.</p>"))
    parts.append(f"<h2>Every batch</h2><table id=\"batches-table\">{_HEAD}{_rows(progress)}"
                 "</table>")
    data = json.dumps([p.to_dict() for p in progress]).replace("</", "<\\/")
    parts.append(f'<script type="application/json" id="batches">{data}</script>')
    parts.append("</body></html>")
    return "\n".join(parts), png


def write_report(checkpoint_dir: str, output: str, png_output: Optional[str] = None
                 ) -> tuple[str, int]:
    """Write the HTML report of ``checkpoint_dir``'s progress history to ``output``.

    Args:
        checkpoint_dir: a checkpoint directory URI.
        output: the HTML file to write.
        png_output: also write the charts as a PNG file here (the docs' picture).

    Returns:
        ``(output, batches charted)``.

    Raises:
        ZdlError: not a checkpoint directory, or matplotlib is missing.
    """
    from beam_zdl.coordinator import CheckpointCoordinator
    if not CheckpointCoordinator(checkpoint_dir).has_config():
        raise ZdlError(f"{checkpoint_dir} is not a beam_zdl checkpoint (no config.pb); give "
                       "the --checkpoint_dir the pipeline ran with")
    history = read_history(checkpoint_dir)
    for d in history.damaged:
        _LOGGER.warning("skipping damaged progress record %s: %s", d.uri, d.reason)
    page, png = render_report(checkpoint_dir, history.progress,
                              [f"{d.uri}: {d.reason}" for d in history.damaged])
    Path(output).write_text(page, encoding="utf-8")
    if png_output is not None and png is not None:
        Path(png_output).write_bytes(png)
    return output, len(history.progress)
