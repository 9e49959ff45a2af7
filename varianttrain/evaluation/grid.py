"""The side-by-side picture of a report: one row per method, one column per (class, seed), the same samples.

Every method sampled the same work list with the same per-image seeds, so a column shows what each method makes
of the same starting point. Rows are labelled with the method (and its weights), columns with the class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from varianttrain.evaluation.seeds import WorkItem, sample_name

MARGIN, LABEL_WIDTH, HEADER = 4, 190, 16


def grid_columns(items: Sequence[WorkItem], columns: int = 10) -> list[WorkItem]:
    """Up to `columns` items: the first sample of each class in class order, then second samples, and so on."""
    by_index = sorted(items, key=lambda it: (it.index, it.label))
    return by_index[:columns]


def side_by_side_grid(rows: Sequence[tuple[str, Path]], columns: Sequence[WorkItem], out: Path,
                      tile: int | None = None) -> Path:
    """Write a PNG grid: `rows` are (label, sample folder); missing samples are left blank and labelled."""
    if not rows or not columns:
        raise ValueError("a grid needs at least one method row and one sample column")
    first = next((folder / sample_name(it.label, it.index) for _, folder in rows for it in columns
                  if (folder / sample_name(it.label, it.index)).is_file()), None)
    side = tile or (Image.open(first).size[0] if first else 64)
    width = LABEL_WIDTH + len(columns) * (side + MARGIN) + MARGIN
    height = HEADER + len(rows) * (side + MARGIN) + MARGIN
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, it in enumerate(columns):
        draw.text((LABEL_WIDTH + j * (side + MARGIN) + MARGIN, 2), f"class {it.label}", fill="black")
    for i, (label, folder) in enumerate(rows):
        y = HEADER + i * (side + MARGIN) + MARGIN
        for k, line in enumerate(_wrap(label, 30)[:max(1, side // 12)]):
            draw.text((MARGIN, y + 12 * k), line, fill="black")
        for j, it in enumerate(columns):
            x = LABEL_WIDTH + j * (side + MARGIN) + MARGIN
            path = folder / sample_name(it.label, it.index)
            if path.is_file():
                with Image.open(path) as img:
                    canvas.paste(img.convert("RGB").resize((side, side), Image.NEAREST), (x, y))
            else:
                draw.rectangle((x, y, x + side - 1, y + side - 1), outline="grey")
                draw.text((x + 4, y + side // 2 - 6), "missing", fill="grey")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    canvas.save(tmp)
    tmp.replace(out)
    return out


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])
