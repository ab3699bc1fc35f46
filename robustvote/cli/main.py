"""The root command group: logging set-up and the one-line error contract."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from robustvote import __version__
from robustvote.errors import RobustVoteError

EXIT_USAGE = 2


class RobustVoteGroup(click.Group):
    """A group that reports bad input as one line on stderr with exit code 2, never a traceback.

    Covers the package's :class:`RobustVoteError`, click's own usage errors (which click would
    print with a usage block) and operating-system errors such as an unwritable output path.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RobustVoteError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"Error: cannot access{where}: {exc.strerror or exc}; check the path and its permissions",
                       err=True)
            ctx.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("Interrupted; finished batches are kept in the run folder.", err=True)
            ctx.exit(130)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
            code = result if isinstance(result, int) else 0
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.format_message(), err=True)
            code = EXIT_USAGE
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            code = EXIT_USAGE
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        except click.Abort:
            click.echo("Aborted.", err=True)
            code = 1
        if standalone:
            sys.exit(code)
        return code


def configure_logging(verbosity: int) -> None:
    """Log to stderr: WARNING by default, INFO with -v, DEBUG with -vv, ERROR with -q."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("robustvote").setLevel(level)


@click.group(cls=RobustVoteGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robustvote")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="Log errors only.")
def main(verbose: int, quiet: bool) -> None:
    """Benchmark the adversarial robustness of hard-label voting ensembles."""
    configure_logging(-1 if quiet else verbose)
