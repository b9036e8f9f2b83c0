"""`sb`: the operator's command line (typer). Start the stack, see what runs, manage contracts."""

from __future__ import annotations

import asyncio
import os
import time

import typer

from workers.runtime.settings import RuntimeSettings, load_settings
from workers.runtime.worker import StartupError, connect_nats

from . import access, ingest, memory_db, registry, tools
from .health import ServiceInstance, degraded, discover, missing

app = typer.Typer(help="Switchboard operations", no_args_is_help=True, add_completion=False)
contracts_app = typer.Typer(help="Contract documents and releases", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")
app.command("init-db")(memory_db.init_db)
app.command()(ingest.ingest)
tools.register(app)  # tail, replay, trace


@app.callback()
def _operator(context: typer.Context) -> None:
    """Beside `just up`, the tools connect as its operator user unless told otherwise."""
    if context.invoked_subcommand != "up":
        from .stack import DEFAULT_RUN_DIR

        os.environ.update(access.operator_env(dict(os.environ), DEFAULT_RUN_DIR))


@app.command()
def up() -> None:
    """Start the whole system on embedded defaults; a crashed process restarts (Ctrl-C stops everything)."""
    from .stack import up as run_stack

    raise typer.Exit(run_stack())


@app.command()
def status(
    watch: bool = typer.Option(False, help="Keep watching; report when the set of services changes"),
    wait: float = typer.Option(0.0, help="Wait up to this many seconds for every expected service"),
) -> None:
    """List the running services (NATS service discovery) and which expected ones are missing."""
    settings = load_settings(RuntimeSettings)
    if not watch:  # an interactive command should not hang for the workers' 30 s start-up grace (unless asked to wait)
        settings = settings.model_copy(update={"connect_timeout_s": max(min(settings.connect_timeout_s, 5.0), wait)})
    try:
        raise typer.Exit(asyncio.run(_status(settings, watch, wait)))
    except StartupError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None


async def _status(settings: RuntimeSettings, watch: bool, wait: float) -> int:
    nc = await connect_nats(settings, "cli")
    expected = registry.SERVICES
    deadline = time.monotonic() + wait
    last: tuple[str, ...] | None = None
    try:
        while True:
            running = await discover(nc)
            absent = missing(expected, running)
            shape = tuple(sorted(f"{s.name}/{s.id}:{'|'.join(s.problems)}" for s in running)) + tuple(absent)
            if shape != last:
                _print_table(running, absent)
                last = shape
            if watch:
                await asyncio.sleep(2.0)
            elif (absent or degraded(running)) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            else:
                return 1 if absent else 3 if degraded(running) else 0
    finally:
        await nc.close()


def _print_table(running: list[ServiceInstance], absent: list[str]) -> None:
    lines = [f"{'service':<16} {'id':<24} {'version':<8} {'uptime':>7}  health"]
    for s in running:
        health = "DEGRADED: " + "; ".join(s.problems) if s.problems else "ok"
        lines.append(f"{s.name:<16} {s.id:<24} {s.version:<8} {s.uptime_s:6.0f}s  {health}")
    lines.extend(f"{name:<16} {'-':<24} {'-':<8} {'-':>7}  MISSING" for name in absent)
    sick = sorted({s.name for s in degraded(running)})
    verdict = (
        f"missing: {', '.join(absent)}"
        if absent
        else f"degraded: {', '.join(sick)}"
        if sick
        else "all expected services healthy"
    )
    typer.echo("\n".join(lines) + f"\n{verdict} ({len(running)} running)")


@app.command()
def provision() -> None:
    """Create or update the declared streams of SB_SUBJECT_PREFIX, as the operator. Services create a
    missing stream but may not change one (ops/access.py): they warn of a difference, this applies it."""
    settings = load_settings(RuntimeSettings)
    try:
        raise typer.Exit(asyncio.run(_provision(settings)))
    except StartupError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None


async def _provision(settings: RuntimeSettings) -> int:
    from contracts.streams import STREAMS
    from workers.runtime.provision import provision as apply

    nc = await connect_nats(settings, "cli")
    try:
        await apply(nc.jetstream(), STREAMS, prefix=settings.subject_prefix, replicas=settings.stream_replicas)
    finally:
        await nc.drain()
    typer.echo(f"the streams of prefix {settings.subject_prefix!r} match the contracts")
    return 0


@app.command()
def config() -> None:
    """Print the configuration reference (every SB_ variable of every process) as Markdown."""
    from .config_doc import reference

    typer.echo(reference(), nl=False)


@contracts_app.command("gen")
def contracts_gen() -> None:
    """Regenerate the JSON Schemas and the AsyncAPI document under contracts/."""
    from . import contracts_gen as gen

    gen.write()


@contracts_app.command("check")
def contracts_check() -> None:
    """Exit 1 when the committed contract documents differ from the code (pre-commit runs it)."""
    from . import contracts_gen as gen

    if stale := gen.stale():
        typer.echo("contract documents drifted; run `just contracts`: " + ", ".join(str(p) for p in stale), err=True)
        raise typer.Exit(1)


@contracts_app.command("release")
def contracts_release() -> None:
    """Record the current contracts as the released baseline (refused if they break it)."""
    from . import contracts_gen as gen

    gen.release()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
