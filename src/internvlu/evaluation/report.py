"""Reports: summary tables in the paper's column layout, and the shapes PNG grid + HTML report."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

# benchmark -> (paper columns as (header, score key), digits); column order as in the paper's tables.
PAPER_COLUMNS: dict[str, tuple[tuple[tuple[str, str], ...], int]] = {
    "geneval": (
        (
            ("Single", "single_object"),
            ("Two", "two_object"),
            ("Count", "counting"),
            ("Colors", "colors"),
            ("Position", "position"),
            ("Color Attr", "color_attr"),
            ("Overall", "overall"),
        ),
        2,
    ),
    "dpg": (
        (
            ("Global", "global"),
            ("Entity", "entity"),
            ("Attribute", "attribute"),
            ("Relation", "relation"),
            ("Other", "other"),
            ("Overall", "overall"),
        ),
        2,
    ),
    "wise": (
        (
            ("Cultural", "cultural"),
            ("Time", "time"),
            ("Space", "space"),
            ("Biology", "biology"),
            ("Physics", "physics"),
            ("Chemistry", "chemistry"),
            ("Overall", "overall"),
        ),
        2,
    ),
    "imgedit": (
        (
            ("Add", "add"),
            ("Adjust", "alter"),
            ("Extract", "extract"),
            ("Replace", "replace"),
            ("Remove", "remove"),
            ("Background", "background"),
            ("Style", "style"),
            ("Hybrid", "compose"),
            ("Action", "action"),
            ("Overall", "overall"),
        ),
        2,
    ),
    "gedit": (
        (
            ("BC", "background_change"),
            ("CA", "color_alter"),
            ("MM", "material_alter"),
            ("MC", "motion_change"),
            ("PB", "ps_human"),
            ("ST", "style_change"),
            ("SA", "subject-add"),
            ("SR", "subject-remove"),
            ("SRp", "subject-replace"),
            ("TM", "text_change"),
            ("TT", "tone_transfer"),
            ("Avg", "overall"),
        ),
        2,
    ),
    "textedit": (
        (
            ("R-TA", "R_TA"),
            ("R-TP", "R_TP"),
            ("R-SI", "R_SI"),
            ("R-LR", "R_LR"),
            ("R-VC", "R_VC"),
            ("R-Avg", "R_avg"),
            ("V-TA", "V_TA"),
            ("V-TP", "V_TP"),
            ("V-SI", "V_SI"),
            ("V-LR", "V_LR"),
            ("V-VC", "V_VC"),
            ("V-Avg", "V_avg"),
        ),
        2,
    ),
    "mme": ((("MME-P", "perception"), ("MME-C", "cognition")), 1),
    "seedbench": ((("SEED", "overall"),), 1),
    "chartqa": ((("ChartQA", "overall"),), 1),
    "ocrbench": ((("OCRBench", "overall"),), 1),
    "mmmu": ((("MMMU", "overall"),), 1),
    "logicvista": ((("LogicVista", "overall"),), 1),
    "shapes": (
        (
            ("Single", "geneval.single_object"),
            ("Two", "geneval.two_object"),
            ("Count", "geneval.counting"),
            ("Colors", "geneval.colors"),
            ("Position", "geneval.position"),
            ("Color Attr", "geneval.color_attr"),
            ("GenEval", "geneval.overall"),
            ("VQA", "vqa"),
            ("Edit", "edit"),
            ("Think", "think"),
            ("Think off", "think_off"),
        ),
        3,
    ),
}


def _lookup(scores: dict[str, Any], key: str) -> Any:
    value: Any = scores
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def paper_table(benchmark: str, scores: dict[str, Any], model: str = "internvlu") -> str:
    """One markdown row (with header) in the paper's columns; missing cells are "–"."""
    if benchmark in PAPER_COLUMNS:
        columns, digits = PAPER_COLUMNS[benchmark]
    else:
        columns, digits = (
            tuple(
                (k, k) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            ),
            3,
        )
    cells = []
    for _, key in columns:
        value = _lookup(scores, key)
        cells.append(
            "–" if not isinstance(value, (int, float)) or isinstance(value, bool) else f"{value:.{digits}f}"
        )
    header = "| Model | " + " | ".join(h for h, _ in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    return "\n".join([header, rule, f"| {model} | " + " | ".join(cells) + " |"])


def summary_report(summary_files: Sequence[Path]) -> str:
    """All benchmarks of several runs as paper-format tables, each with its settings line."""
    blocks = []
    for path in summary_files:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
        s = summary["settings"]
        label = f"{summary['title'] or summary['benchmark']} ({'w/ CoT' if s.get('think') else 'w/o CoT'})"
        line = (
            f"seed {s['seed']}, {s['num_inference_steps']} steps, cfg {s['all_cfg_scale']}/{s['part_cfg_scale']}, "
            f"{s['height']}x{s['width']}, {s['num_images']} image(s)/prompt, rewriting {s['prompt_rewriting']}, "
            f"model sha256 {s['model_sha256'][:12]}"
        )
        if summary.get("scores"):
            body = paper_table(summary["benchmark"], summary["scores"])
        elif summary.get("layout_problems"):
            body = "layout problems: " + "; ".join(summary["layout_problems"][:5])
        else:
            body = "generated; not scored offline"
        blocks.append(f"### {label}\n\n{line}\n\n{body}\n")
    return "\n".join(blocks)


# --------------------------------------------------------------------------------------------------
# Shapes report
# --------------------------------------------------------------------------------------------------

TILE = 128
CAPTION = 30


def _tile(image: Image.Image | None) -> Image.Image:
    if image is None:
        return Image.new("RGB", (TILE, TILE), (235, 235, 235))
    return image.convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST)


def _text_tile(text: str) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), (250, 250, 250))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default(size=11)
    words, lines, line = text.split(), [], ""
    for word in words:
        if draw.textlength(f"{line} {word}".strip(), font=font) > TILE - 6:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    draw.multiline_text((3, 3), "\n".join(lines[:9]), fill=(20, 20, 20), font=font)
    return tile


def _row_images(example: dict[str, Any]) -> list[Image.Image]:
    task = example["task"]
    inputs = list(task.images[:2]) + [None] * (2 - len(task.images[:2]))
    output = example["output"]
    out_tile = _text_tile(f"answer: {output}") if isinstance(output, str) else _tile(output)
    target = _text_tile(f"truth: {task.answer}") if task.kind == "vqa" else _tile(task.target)
    return [_tile(im) if im is not None else _tile(None) for im in inputs] + [out_tile, target]


def shapes_grid(examples: Sequence[dict[str, Any]]) -> Image.Image:
    """One row per example: input(s), model output, target; a caption strip with prompt and verdict."""
    rows = []
    for ex in examples:
        tiles = _row_images(ex)
        row = Image.new("RGB", (TILE * len(tiles), TILE + CAPTION), (255, 255, 255))
        for k, tile in enumerate(tiles):
            row.paste(tile, (k * TILE, CAPTION))
        draw = ImageDraw.Draw(row)
        font = ImageFont.load_default(size=11)
        verdict = "PASS" if ex["ok"] else "FAIL"
        draw.text(
            (3, 2),
            f"[{verdict}] {ex['label']}: {ex['task'].prompt.replace(chr(10), ' ')}"[:110],
            fill=(0, 120, 0) if ex["ok"] else (180, 0, 0),
            font=font,
        )
        draw.text((3, 15), "inputs | output | target", fill=(90, 90, 90), font=font)
        rows.append(row)
    if not rows:
        return Image.new("RGB", (TILE, TILE), (255, 255, 255))
    # Wrap into columns so the sheet stays roughly landscape-friendly instead of one tall strip.
    ncols = max(1, min(4, round(math.sqrt(len(rows) / 3))))
    per_col = -(-len(rows) // ncols)
    col_w, row_h = max(r.width for r in rows), rows[0].height
    canvas = Image.new("RGB", (ncols * col_w, per_col * row_h), (255, 255, 255))
    for k, row in enumerate(rows):
        canvas.paste(row, ((k // per_col) * col_w, (k % per_col) * row_h))
    return canvas


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_shapes_report(
    folder: Path, results: dict[str, Any], examples: Sequence[dict[str, Any]]
) -> dict[str, str]:
    """Write ``shapes_samples.png`` (the grid) and ``shapes_report.html`` (scores + every example)."""
    folder.mkdir(parents=True, exist_ok=True)
    grid_path = folder / "shapes_samples.png"
    shapes_grid(examples).save(grid_path)
    scores = {k: v for k, v in results.items() if k not in ("settings", "report")}
    rows = []
    for ex in examples:
        task = ex["task"]
        cells = "".join(f'<td><img src="{_data_url(im)}" width="{TILE}"></td>' for im in _row_images(ex))
        verdict = '<b style="color:green">pass</b>' if ex["ok"] else '<b style="color:#b00">fail</b>'
        rows.append(
            f"<tr><td>{html.escape(ex['label'])}</td><td>{html.escape(task.prompt)}</td><td>{verdict}</td>{cells}</tr>"
        )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>internvlu eval shapes</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}}</style>
</head><body>
<h1>Shapes-world evaluation</h1>
<p>{results["num"]} fresh tasks per GenEval category and per kind, seed {results["seed"]}, {results["image_size"]} px.
Scored from pixels by the classical detector.</p>
<h2>Scores</h2>
{_markdown_table_html(paper_table("shapes", scores))}
<h2>Breakdown</h2>
<pre>{html.escape(json.dumps(scores, indent=2))}</pre>
<h2>Settings</h2>
<pre>{html.escape(json.dumps(results.get("settings", {}), indent=2))}</pre>
<h2>Samples</h2>
<table><tr><th>task</th><th>prompt</th><th>verdict</th><th>input 1</th><th>input 2</th><th>output</th><th>target</th></tr>
{"".join(rows)}
</table>
</body></html>
"""
    html_path = folder / "shapes_report.html"
    html_path.write_text(page, encoding="utf-8")
    return {"grid": str(grid_path), "html": str(html_path)}


def _markdown_table_html(table: str) -> str:
    lines = [line for line in table.splitlines() if not line.startswith("|---")]
    out = ["<table>"]
    for k, line in enumerate(lines):
        cells = [c.strip() for c in line.strip("|").split("|")]
        tag = "th" if k == 0 else "td"
        out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
