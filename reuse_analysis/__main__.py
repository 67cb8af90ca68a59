"""``python -m reuse_analysis`` runs the command-line interface."""

from reuse_analysis.cli import main

if __name__ == "__main__":
    main()
