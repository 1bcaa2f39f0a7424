"""`python -m edgekit`: the same as the `edgekit` command."""

from edgekit.cli.main import main

if __name__ == "__main__":
    main()
