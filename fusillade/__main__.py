"""``python -m fusillade``: the command line (``fusillade.cli``)."""

from fusillade.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
