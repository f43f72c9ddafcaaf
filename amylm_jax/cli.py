"""The command-line convention shared by every ``python -m amylm_jax.<tool>`` entry point.

Each tool defines its flags with absl (``--name=value``, ``--config`` from ml_collections where a
config applies) in a private ``FlagValues`` made by :func:`new_flags`, so several tools can be
imported into one process (tests, notebooks) without their flags colliding, and calls
:func:`run` with its ``main(positional_args)``. Common to all tools:

* ``--help`` prints the tool's description and every flag with its default;
* ``-v`` / ``--verbosity``: 0 (default) shows the tool's own messages and keeps library log
  lines (orbax, absl, JAX) to warnings; 1 shows their info lines too; 2 is debug;
* a bad argument, a missing file or unusable data ends in one ``error: ...`` line naming the
  thing at fault and exit status 2, not a traceback;
* a mistyped ``--config.a.b=v`` names the unknown key and the valid keys nearest to it.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import sys
from collections.abc import Callable, Sequence

from absl import flags
from absl import logging as absl_logging

from amylm_jax.config import TrainConfig

#: Exit status of a user error (bad flag, bad file, bad data).
EXIT_USAGE = 2

#: Exceptions that are the user's to fix; shown as one line, never as a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                 OSError, flags.Error)  # fmt: skip


class UsageError(ValueError):
    """A bad command line (wrong positional arguments, missing or conflicting flags)."""


def new_flags() -> flags.FlagValues:
    """A private flag set with the common ``--verbosity`` / ``-v`` flag."""
    fv = flags.FlagValues()
    flags.DEFINE_integer(
        "verbosity",
        0,
        "0: this tool's messages and library warnings; 1: library info lines too; 2: debug.",
        short_name="v",
        flag_values=fv,
    )
    return fv


def help_text(fv: flags.FlagValues, prog: str, doc: str | None) -> str:
    lines = [f"usage: python -m {prog} [flags] ...", ""]
    if doc:
        lines += [doc.strip(), ""]
    lines.append("flags:")
    seen: set[int] = set()
    for flag in sorted(fv._flags().values(), key=lambda f: f.name):  # noqa: SLF001
        if flag.name in ("flagfile", "undefok") or id(flag) in seen:
            continue
        seen.add(id(flag))
        names = f"-{flag.short_name},--{flag.name}" if flag.short_name else f"--{flag.name}"
        default = "none" if flag.default is None else (flag.default_as_str or "''")
        lines.append(f"  {names}: {flag.help}")
        lines.append(f"    (default: {default})")
    return "\n".join(lines)


def parse(fv: flags.FlagValues, argv: Sequence[str], prog: str, doc: str | None) -> list[str]:
    """Parse ``argv`` (without the program name) into ``fv``; returns the positional args.

    ``--help`` prints :func:`help_text` and exits 0; a bad flag raises :class:`UsageError`.
    """
    argv = list(argv)
    if "--help" in argv or "-h" in argv or "--helpfull" in argv:
        print(help_text(fv, prog, doc))
        raise SystemExit(0)
    fv.unparse_flags()
    try:
        rest = fv([prog, *argv])
    except flags.UnrecognizedFlagError as err:
        raise UsageError(_unknown_flag_message(fv, err)) from None
    except flags.Error as err:
        raise UsageError(str(err)) from None
    except (AttributeError, KeyError) as err:  # ml_collections: an override of an unknown key
        raise UsageError(_bad_override_message(argv, err)) from None
    return rest[1:]


def _bad_override_message(argv: Sequence[str], err: Exception) -> str:
    known = set(config_keys(TrainConfig))
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config.") :].split("=", 1)[0]
            if key not in known:
                return _config_key_message(key, sorted(known))
    return f"bad --config override: {err}"


def _config_key_message(key: str, known: list[str]) -> str:
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    if not near:  # the same section first
        section = key.rsplit(".", 1)[0] + "."
        near = [k for k in known if k.startswith(section)][:8]
    hint = f"; nearest valid keys: {', '.join('--config.' + k for k in near)}" if near else ""
    return f"unknown config key --config.{key}{hint}"


def _unknown_flag_message(fv: flags.FlagValues, err: flags.UnrecognizedFlagError) -> str:
    name = err.flagname
    if name.startswith("config.") and "config" in fv:
        return _config_key_message(name.removeprefix("config."), config_keys(TrainConfig))
    near = difflib.get_close_matches(name, list(fv), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join('--' + n for n in near)}?)" if near else ""
    return f"unknown flag --{name}{hint}; see --help"


def config_keys(cls: type) -> list[str]:
    """Every dotted field path of a (nested) config dataclass, e.g. ``loss.alpha_msspec``."""
    out = []
    for field in dataclasses.fields(cls):
        default = field.default
        if dataclasses.is_dataclass(default):
            out += [f"{field.name}.{sub}" for sub in config_keys(type(default))]
        else:
            out.append(field.name)
    return out


def configure_logging(verbosity: int) -> None:
    """Our messages at INFO; library loggers (absl carries orbax's) at WARNING unless asked."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("amylm_jax").setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    library = (
        logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity >= 1 else logging.WARNING
    )
    for name in ("absl", "jax", "orbax", "grain", "fsspec", "gcsfs", "urllib3"):
        logging.getLogger(name).setLevel(library)
    absl_logging.set_verbosity(absl_logging.INFO if verbosity >= 1 else absl_logging.WARNING)


def run(
    main: Callable[[list[str]], int | None],
    fv: flags.FlagValues,
    prog: str,
    doc: str | None,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse flags, set up logging, call ``main(positional)``; user errors become exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        positional = parse(fv, argv, prog, doc)
        configure_logging(fv["verbosity"].value)
        status = main(positional)
    except USER_ERRORS as err:
        if "verbosity" in fv and fv["verbosity"].present and fv["verbosity"].value >= 2:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return int(status or 0)
