"""``python -m mimir_fast.doctor [--flag value ...]``: the doctor with one flag per ``DoctorConfig`` field; exits
with the document's ``exit_code`` (2 for a bad flag)."""

from __future__ import annotations

import sys

from ..errors import MimirFastError, one_line


def main(argv: list[str] | None = None) -> int:
    from ..flags import Parser, add_config_flags
    from . import DoctorConfig, run_doctor

    parser = Parser(prog="python -m mimir_fast.doctor", description="What works on this machine, and how fast.")
    add_config_flags(parser, DoctorConfig)
    args = parser.parse_args(argv)
    try:
        return run_doctor(DoctorConfig(**vars(args)))["exit_code"]
    except MimirFastError as e:
        sys.stderr.write(f"mimir_fast.doctor: error: {one_line(e)}\n")
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
