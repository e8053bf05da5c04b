"""JSONL batch mode of the CLI: one request per input line, one result line per input line.

Results are appended as each line finishes (flushed), so an interrupted run resumes where it
stopped: lines that already have a result are skipped (failed ones too, unless `retry_failed`,
which first rewrites the results file without them so that each input keeps exactly one line).
Input lines are numbered from 1 in the file (blank lines count, so numbers match an editor's).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class BatchSummary:
    total: int
    done_before: int
    ok: int
    failed: int
    failed_before: int = 0  # lines whose earlier result (kept on resume) is an error

    @property
    def all_ok(self) -> bool:
        return self.failed == 0 and self.failed_before == 0


def default_results_path(requests_path: Path) -> Path:
    return requests_path.with_name(requests_path.stem + ".results.jsonl")


def read_requests(path: Path) -> list[tuple[int, dict[str, Any] | Exception]]:
    """(line number, request object or the parse error) for every non-blank line."""
    if not path.is_file():
        raise FileNotFoundError(f"batch file {str(path)!r} does not exist")
    out: list[tuple[int, dict[str, Any] | Exception]] = []
    with path.open(encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                out.append((number, ValueError(f"line {number}: invalid JSON request: {exc}")))
                continue
            if isinstance(obj, dict):
                out.append((number, obj))
            else:
                out.append((number, TypeError(f"line {number} is a JSON {type(obj).__name__}, not an object")))
    return out


def read_results(path: Path) -> dict[int, dict[str, Any]]:
    """line number -> its result record (the last one if a line appears twice). A torn last line
    (the run was killed mid-write) is ignored, so that line simply runs again."""
    done: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for record in _parsed_lines(path):
        if isinstance(record, dict) and isinstance(record.get("line"), int):
            done[record["line"]] = record
    return done


def _parsed_lines(path: Path) -> Iterator[Any]:
    """The JSON value of every line of a results file that parses; a torn line is skipped."""
    with path.open(encoding="utf-8") as fh:
        for raw in fh:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            yield record


def check_keys(request: dict[str, Any], allowed: set[str], line: int) -> None:
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise ValueError(f"line {line}: unknown keys {unknown}; allowed: {sorted(allowed)}")


def run_batch(
    requests_path: Path,
    results_path: Path | None,
    handle: Callable[[dict[str, Any], int], dict[str, Any]],
    *,
    retry_failed: bool = False,
    progress: bool = True,
    desc: str = "batch",
) -> BatchSummary:
    """Run `handle(request, line)` for every line without a result; append one record per line.

    A record is {"line", "id", "ok": true, **handle's output} or {"line", "id", "ok": false, "error"}.
    """
    from tqdm.auto import tqdm

    requests_path = Path(requests_path)
    results_path = Path(results_path) if results_path else default_results_path(requests_path)
    if results_path.resolve() == requests_path.resolve():
        raise ValueError(f"the results file {str(results_path)!r} must differ from the batch file")
    requests = read_requests(requests_path)
    done = read_results(results_path)
    if retry_failed:
        failed = {n for n, r in done.items() if not r.get("ok")}
        if failed:
            _rewrite_without(results_path, failed)
            done = {n: r for n, r in done.items() if n not in failed}
    todo = [(n, req) for n, req in requests if n not in done]
    summary = BatchSummary(total=len(requests), done_before=len(requests) - len(todo), ok=0, failed=0,
                           failed_before=sum(1 for n, _ in requests if n in done and not done[n].get("ok")))
    results_path.parent.mkdir(parents=True, exist_ok=True)
    with results_path.open("a", encoding="utf-8") as out, tqdm(total=len(todo), desc=desc, disable=not progress) as bar:
        for number, request in todo:
            record: dict[str, Any] = {"line": number}
            if isinstance(request, Exception):
                record.update(ok=False, error=str(request))
            else:
                record["id"] = request.get("id", number)
                try:
                    record.update(handle(request, number))
                    record["ok"] = True
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad line must not stop the batch; it is reported in its record
                    record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            summary.ok += bool(record["ok"])
            summary.failed += not record["ok"]
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(1)
    return summary


def _rewrite_without(path: Path, lines: set[int]) -> None:
    kept = [
        json.dumps(record, ensure_ascii=False) + "\n"
        for record in _parsed_lines(path)
        if record.get("line") not in lines
    ]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def resolve_paths(value: Any, base: Path, key: str, line: int) -> list[str]:
    """A line's "images" (list) or "image" (one) -> paths, relative ones against the batch file's folder."""
    items = value if isinstance(value, list) else [value]
    paths = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"line {line}: {key} must hold path strings, got {item!r}")
        p = Path(item).expanduser()
        paths.append(str(p if p.is_absolute() else base / p))
    return paths
