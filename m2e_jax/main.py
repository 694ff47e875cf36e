"""Command line: `python -m m2e_jax.main --config configs/NAME.py[:ARG] --workdir DIR [--config.x=y]`.

Validates the config, then trains and evaluates (m2e_jax.train.train_and_evaluate); rerunning the
same command resumes from the workdir's latest checkpoint. Exits 0 after a SIGTERM (state saved).
`python -m m2e_jax.main --describe` lists every config field with its default, allowed values and
meaning (m2e_jax/config_schema.py), and exits.
A problem the user can act on (a config value, the workdir: unwritable, full, in use by another run;
a checkpoint; a non-finite loss) ends with one line on stderr and exit code 1, no traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, images and eval tables.")
config_flags.DEFINE_config_file("config", None, "configs/NAME.py[:ARG]", lock_config=True)
flags.DEFINE_bool("describe", False, "List every config field (default, allowed values, meaning) and exit.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from m2e_jax import config_schema, storage_clients, xla_flags

    try:
        config_schema.validate(FLAGS.config)  # before TensorFlow / JAX start up
    except config_schema.ConfigError as e:
        _exit_with(e)
    # After validation, which builds no path (a config error stays quick: install imports orbax).
    storage_clients.install()
    xla_flags.configure(FLAGS.config.cpu_convolutions)
    try:  # clu's writers import TensorFlow: keep it off the accelerators.
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    except ImportError:
        pass
    if FLAGS.config.compilation_cache_dir:
        import jax

        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.config.compilation_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    from m2e_jax import train

    logging.info("workdir %s", FLAGS.workdir)
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except train.USER_ERRORS as e:
        _exit_with(e)


def _exit_with(error: Exception) -> None:
    """The user's error as the last thing printed, without a traceback; exit code 1."""
    print(f"m2e_jax.main: error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or a `--config` file that fails to load (missing, raises
    on import or in get_config) reported in one line instead of a traceback through the loader.
    `--describe` prints the config fields and exits (it needs neither --config nor --workdir)."""
    if any(a in ("--describe", "-describe", "--describe=true") for a in argv[1:]):
        from m2e_jax import config_schema

        print(config_schema.describe())
        sys.exit(0)
    try:
        rest = FLAGS(argv)
        FLAGS.config.keys()  # ml_collections defers a missing file's error to the first access
        return rest
    except (flags.Error, OSError) as e:
        # ml_collections puts the config's own traceback inside its message: keep the first line
        # (which flag) and the last (what the config raised).
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        msg = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
    except Exception as e:  # raised while importing the config file
        spec = next((a.split("=", 1)[1] if "=" in a else b for a, b in zip(argv, argv[1:] + [""])
                     if a.split("=", 1)[0] in ("--config", "-config")), "")
        msg = f"--config {spec}: {type(e).__name__}: {' '.join(str(e).split())}"
    print(f"m2e_jax.main: error: {msg}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
