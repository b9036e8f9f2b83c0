"""`sb ingest PATH...`: load documents into a knowledge base through the retriever's job queue.

It is the operators' tool: it loads the shared read-only bases (owner ``public``) that every
session searches beside its own; a session's own documents come through the edge's upload.

Each file becomes one durable ingestion job (small text inline, anything else through the
JetStream object store); the command follows every job's progress on its own session's
subjects, shows a progress bar per file, and exits 1 if any job failed or timed out.
Directories are walked recursively (hidden files skipped).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from contracts import events as ev
from contracts.envelope import new_id
from workers.retriever.settings import RetrieverSettings
from workers.runtime.bus import Bus
from workers.runtime.ingest import content_type_for, submit_delete, submit_ingest, watch_jobs
from workers.runtime.settings import load_settings
from workers.runtime.worker import StartupError, connect_nats

console = Console(stderr=True)


def files_of(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
                )
            )
        elif path.is_file():
            found.append(path)
        else:
            raise typer.BadParameter(f"{path} does not exist")
    return found


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to ingest")],
    base: Annotated[str, typer.Option(help="Knowledge base (collection) to load them into")] = "default",
    delete: Annotated[bool, typer.Option("--delete", help="Remove these documents instead")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a job's next event before giving up")] = 300.0,
) -> None:
    """Ingest documents (text, Markdown, HTML, PDF) into a knowledge base, with a progress bar."""
    settings = load_settings(RetrieverSettings)
    files = files_of(paths)
    try:
        failed = asyncio.run(_ingest(settings, files, base, delete, timeout))
    except StartupError as error:
        console.print(str(error))
        raise typer.Exit(1) from None
    raise typer.Exit(1 if failed else 0)


async def _ingest(settings: RetrieverSettings, files: list[Path], base: str, delete: bool, timeout: float) -> int:
    nc = await connect_nats(settings, "cli")
    bus = Bus(producer="sb-ingest", prefix=settings.subject_prefix)
    bus.attach(nc)
    session_id = new_id()  # the CLI's own session: its jobs report there
    tasks: dict[str, TaskID] = {}
    failed = 0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:

        def on_progress(event: ev.JobProgress) -> None:
            if event.job_id in tasks:
                bar.update(tasks[event.job_id], completed=event.done, total=max(event.total, 1), stage=event.stage)

        try:
            async with watch_jobs(nc, session_id, bus.prefix, on_progress) as watch:
                for path in files:
                    if delete:
                        job = await submit_delete(bus, session_id, path.name, base, "public")
                    elif (size := path.stat().st_size) > settings.retriever_max_document_bytes:
                        console.print(
                            f"[red]{path}: {size / 1e6:.1f} MB is over the limit of "
                            f"{settings.retriever_max_document_bytes / 1e6:.1f} MB[/red]"
                        )
                        failed += 1
                        continue
                    else:
                        job = await submit_ingest(
                            bus, session_id, path.name, path.read_bytes(), content_type_for(path.name), base, "public"
                        )
                    tasks[job.job_id] = bar.add_task(str(path), total=None, stage="queued")
                try:
                    async for result in watch.results(set(tasks), timeout):
                        failed += result.status == "failed"
                        bar.update(tasks[result.job_id], completed=1, total=1, stage=_describe(result))
                except TimeoutError:
                    console.print(f"[red]no news from the retriever for {timeout:g}s: is it running?[/red]")
                    return failed + 1
        finally:
            await nc.drain()
    return failed


def _describe(result: ev.IngestResult) -> str:
    if result.status == "failed":
        return f"[red]failed: {result.error}[/red]"
    if result.status == "ingested":
        return f"[green]ingested, {result.chunks} chunks[/green]"
    if result.status == "deleted":
        return f"deleted, {result.chunks} chunks"
    return "unchanged"
