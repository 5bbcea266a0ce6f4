"""``python -m kaffi`` is the ``kaffi`` command."""

from kaffi.cli import main

if __name__ == "__main__":
    main(prog_name="kaffi")
